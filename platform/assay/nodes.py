"""More Ray nodes on this machine for the head `assay cluster up` started: a multi-node cluster
on loopback, as Ray's own tests build one (`ray.cluster_utils`), to try what a cluster does
(workers spread over nodes, a node lost and replaced) without a second machine.

Each node is its own raylet, object store and workers, bound to 127.0.0.1 like the head (Ray's
single-machine mode, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`). `ray start --address` refuses to
start a node in that mode ("Multi-node Ray clusters are not supported on Windows and OSX"): the
check is the command's only; `ray start` then builds the node with `ray._private.node.Node`, and
so does `run_node` here (a private API, the one `ray.cluster_utils.Cluster.add_node` uses; Ray has
no public one for a node in a Python process). A real second machine joins with `ray start
--address HEAD` against a head started with `--host`.

`add_node` starts `python -m assay.nodes` in its own process group and records it in
`.assay/cluster-nodes.json`; `assay cluster down` stops the nodes, then the head. Killing a node's
process and everything under it (SIGKILL; Ray's workers sit in process groups of their own) is
losing the node: its raylet and workers go at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from assay.errors import UserError
from assay.lifecycle import group_alive, pid_alive, stop_tree

NODES = Path(".assay") / "cluster-nodes.json"
GRACE_S = 16.0


class NodeError(UserError, RuntimeError):
    pass


@dataclass
class NodeProcess:
    pid: int  # also its process group: the raylet, object store and workers
    name: str  # the custom resource it offers (1 unit): `node-2`, ...
    num_cpus: int
    log: str


def load(root: Path) -> list[NodeProcess]:
    """The nodes this project started that still have a process running (the node's own, or
    its raylet's: the group outlives a leader that died)."""
    path = root / NODES
    if not path.exists():
        return []
    nodes = [NodeProcess(**n) for n in json.loads(path.read_text())]
    return [n for n in nodes if pid_alive(n.pid) or group_alive(n.pid)]


def _save(root: Path, nodes: list[NodeProcess]) -> None:
    (root / NODES).parent.mkdir(parents=True, exist_ok=True)
    (root / NODES).write_text(json.dumps([asdict(n) for n in nodes], indent=2))


def add_node(root: Path, address: str, num_cpus: int = 1, timeout: float = 90) -> NodeProcess:
    """Start a node that joins the head at `address` (GCS host:port on 127.0.0.1) and wait
    until it says it joined (Ray's `Node` returns once its raylet registered with the GCS).
    One at a time per project (a lock on the record), so two never take the same name."""
    from filelock import FileLock

    (root / NODES).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / NODES) + ".lock"):
        return _add_node(root, address, num_cpus, timeout)


def _add_node(root: Path, address: str, num_cpus: int, timeout: float) -> NodeProcess:
    known = load(root)
    name = f"node-{max([int(n.name.split('-')[1]) for n in known] + [1]) + 1}"
    log = root / ".assay" / f"ray-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "assay.nodes", address, "--num-cpus", str(num_cpus)]
    cmd += ["--name", name]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    node = NodeProcess(proc.pid, name, num_cpus, str(log))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            stop(node)  # whatever it started before it failed
            raise NodeError(f"the Ray node exited with {proc.returncode}; see {log}")
        if "node up" in log.read_text():
            _save(root, [*known, node])
            return node
        time.sleep(0.5)
    stop(node)
    raise NodeError(f"the Ray node did not join {address} in {timeout:.0f} s; see {log}")


def stop(node: NodeProcess, timeout: float = GRACE_S) -> None:
    """The node's process group (its atexit stops the raylet and workers) and every process
    under it (Ray's workers sit in groups of their own): SIGTERM, then SIGKILL after
    `timeout` (`lifecycle.stop_tree`)."""
    stop_tree(node.pid, timeout)


def stop_all(root: Path) -> list[NodeProcess]:
    nodes = load(root)
    for n in nodes:
        stop(n)
    (root / NODES).unlink(missing_ok=True)
    return nodes


def run_node(address: str, num_cpus: int, name: str) -> None:
    """The node itself (`python -m assay.nodes`): joins the GCS at `address`, then waits for a
    signal; on SIGTERM its Node's atexit stops the raylet, object store and workers."""
    from assay.rayenv import auth_env, ray_defaults

    # before Ray loads, which reads them once: 127.0.0.1 only; the head's token
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_defaults()
    auth_env()
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    params = RayParams(
        gcs_address=address,
        node_ip_address="127.0.0.1",
        num_cpus=num_cpus,
        num_gpus=0,
        resources={name: 1},
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,  # the head's watches this machine's logs already
    )
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # atexit runs: the node stops
    print(f"node up: {node.node_id} ({name}, {num_cpus} CPU) joined {address}", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="A Ray node on 127.0.0.1 for a local head")
    ap.add_argument("address")
    ap.add_argument("--num-cpus", type=int, default=1)
    ap.add_argument("--name", default="node-2")
    a = ap.parse_args()
    run_node(a.address, a.num_cpus, a.name)
