"""What `assay cluster up`, `assay submit` and a run's own local Ray expose: every port they open
listens on 127.0.0.1, and no credential travels with a job (the Jobs API's answer and every file
of the head's Ray session folder are searched for it).

One head for the module (a head takes 5-9 s to start): `assay cluster up` in a project with its
own HOME (no ~/.netrc, no W&B login: a node without credentials), stopped by its process group
whatever the tests do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from assay import cluster
from assay.distributed import ray_session
from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.slow

# recognisable in any file; shaped like a W&B key (40 characters)
FAKE_KEY = "assayFAKEwandbKEY0123456789abcdef01234567"


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "RAY_"))}
    env.update(
        HOME=str(root / "home"),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        WANDB_CONFIG_DIR=str(root / "home" / "wandb-config"),
        WANDB_CACHE_DIR=str(root / "home" / "wandb-cache"),
        WANDB_DATA_DIR=str(root / "home" / "wandb-data"),
    )
    return {**env, **extra}


def _assay(root: Path, *args: str, timeout: float = 300, **extra: str):
    return subprocess.run(
        [sys.executable, "-m", "assay.cli", *args],
        cwd=root,
        env=_env(root, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory, digits_data):
    """(project root, the head's cluster.json) of a head `assay cluster up` started."""
    root = tmp_path_factory.mktemp("head")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(digits_data, root / "data")
    (root / "home").mkdir()
    up = _assay(root, "cluster", "up", "--num-cpus", "2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield root, json.loads((root / ".assay" / "cluster.json").read_text())
    finally:
        cluster.down(root)


def _api(dashboard: str, path: str, root: Path, body: dict | None = None) -> dict | str:
    """The Jobs REST API, with the cluster's token when it has one (Ray sends it the same way)."""
    token = root / "home" / ".ray" / "auth_token"
    headers = {"Content-Type": "application/json"}
    if token.exists():
        headers["Authorization"] = f"Bearer {token.read_text().strip()}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(dashboard + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    return json.loads(text) if text.startswith(("{", "[")) else text


def _group(pgid: int) -> list[psutil.Process]:
    """The head's processes: its process group and whatever they started."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except (psutil.Error, ProcessLookupError):
            continue
    return list(found.values())


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP socket."""
    found = []
    for p in processes:
        try:
            name = " ".join(p.cmdline())[:300]
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, as a dual-stack socket shows IPv4 loopback
    return addr.is_loopback


def test_every_port_of_the_head_and_its_workers_listens_on_loopback(head):
    """GCS, raylet (node and object manager), dashboard and its agent, runtime-env agent,
    metrics, client server, a job's driver and a worker that ran a task."""
    root, state = head
    script = (
        "import ray, time; ray.init(); "
        "print('ready', ray.get(ray.remote(lambda: 1).remote()), flush=True); time.sleep(60)"
    )
    job = _api(state["dashboard"], "/api/jobs/", root, {"entrypoint": f'python -c "{script}"'})
    job_id = job["submission_id"]
    try:
        deadline = time.time() + 120
        while "ready 1" not in _api(state["dashboard"], f"/api/jobs/{job_id}/logs", root)["logs"]:
            assert time.time() < deadline, "the job's task never ran"
            time.sleep(1)
        sockets = _listening(_group(state["pid"]))
    finally:
        _api(state["dashboard"], f"/api/jobs/{job_id}/stop", root, {})
    names = " ".join(name for name, _, _ in sockets)
    kinds = (
        *("gcs_server", "raylet", "dashboard/dashboard.py", "ray.util.client.server"),
        *("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobSupervisor", "ray::IDLE"),
        "import ray, time",  # the job's driver
    )
    for kind in kinds:  # the listing sees every kind of server
        assert kind in names, (kind, sockets)
    exposed = [s for s in sockets if not _loopback(s[1])]
    assert not exposed, exposed


def test_a_driver_on_this_machine_joins_the_head_by_its_loopback_address(head):
    """`assay train --address 127.0.0.1:PORT`: Ray would look for the GCS on the LAN address."""
    root, state = head
    script = (
        "import ray; from pathlib import Path; from assay.config import load_config; "
        "from assay.distributed import ray_session\n"
        "with ray_session(load_config(root=Path('.'))):\n"
        "    print('answer', ray.get(ray.remote(lambda: 7).remote()))"
    )
    # RAY_AUTH_MODE from the shell, as the README says: set once Ray is imported, it is not read
    env = _env(root, RAY_ADDRESS=state["address"], RAY_AUTH_MODE="token")
    cmd = [sys.executable, "-c", script]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and "answer 7" in run.stdout, run.stdout + run.stderr[-3000:]


def test_the_head_refuses_a_request_without_its_token(head):
    """The head's HOME had no ~/.ray/auth_token, where `ray start` alone leaves auth off."""
    root, state = head
    assert (root / "home" / ".ray" / "auth_token").exists()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(state["dashboard"] + "/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)
    assert isinstance(_api(state["dashboard"], "/api/jobs/", root), list)  # with it: answered


def _session_dir(pgid: int) -> Path:
    """The head's /tmp/ray/session_* folder, from its processes' own command lines."""
    found = set()
    for p in _group(pgid):
        try:
            found.update(re.findall(r"(/\S*/session_[^/\s]+)/", " ".join(p.cmdline())))
        except psutil.Error:
            continue
    assert len(found) == 1, found
    return Path(found.pop())


def _files_holding(folder: Path, secret: str) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                hits.append(str(path))
        except OSError:  # a socket, or a file Ray removed meanwhile
            continue
    return hits


def _submit(root: Path, state: dict, **env: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    """`assay submit` a one-epoch training; (the command's result, the job's info as the Jobs
    API returns it once the job has ended, the job's logs)."""
    args = ("--set", "train.dataset=digits", "--set", "train.arch=mlp_tiny")
    result = _assay(root, "submit", *args, "--set", "train.max_epochs=1", **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.split("as Ray job ")[1].split()[0]
    deadline = time.time() + 300
    while (info := _api(state["dashboard"], f"/api/jobs/{job_id}", root))["status"] in (
        "PENDING",
        "RUNNING",
    ):
        assert time.time() < deadline, info
        time.sleep(1)
    return result, info, _api(state["dashboard"], f"/api/jobs/{job_id}/logs", root)["logs"]


def test_a_job_carries_no_credential_and_still_trains(head):
    """WANDB_API_KEY in the submitting shell: not in the job's runtime_env, metadata or
    entrypoint as the Jobs API returns them, nor in any file of the session folder; W&B
    offline, the job succeeds."""
    root, state = head
    result, info, logs = _submit(root, state, WANDB_API_KEY=FAKE_KEY, WANDB_MODE="offline")
    assert info["status"] == "SUCCEEDED", logs[-3000:]
    assert "MLFLOW_TRACKING_URI" in info["runtime_env"]["env_vars"]  # what the job was given
    assert FAKE_KEY not in json.dumps(info)  # runtime_env, metadata, entrypoint
    assert not _files_holding(_session_dir(state["pid"]), FAKE_KEY)


def test_online_wandb_on_a_node_without_credentials_fails_saying_how_to_log_in(head):
    """The key stays here (a note says so); the node has none, so the job fails at once with
    the fix, not with a prompt or W&B's network retries."""
    root, state = head
    result, info, logs = _submit(root, state, WANDB_API_KEY=FAKE_KEY, WANDB_MODE="online")
    assert "WANDB_API_KEY is not sent with the job" in result.stderr, result.stderr[-3000:]
    assert info["status"] == "FAILED", logs[-3000:]
    assert "W&B online logging needs credentials: run `wandb login`" in logs, logs[-3000:]
    assert FAKE_KEY not in json.dumps(info)
    assert not _files_holding(_session_dir(state["pid"]), FAKE_KEY)


def test_a_runs_own_local_ray_listens_on_loopback_only(project):
    """`ray_session` without a cluster: the driver, GCS, raylet, dashboard, agents, a worker."""
    import ray

    cfg = tiny_config(project)
    me = psutil.Process()
    try:
        with ray_session(cfg):
            assert ray.get(ray.remote(lambda: 1).remote()) == 1
            started = me.children(recursive=True)
            sockets = _listening([me, *started])
    finally:
        for p in me.children(recursive=True):  # never leak a Ray into the next test
            with contextlib.suppress(psutil.Error):
                if any(n in " ".join(p.cmdline()) for n in ("raylet", "gcs_server", "ray::")):
                    p.kill()
    assert any("gcs_server" in name for name, _, _ in sockets), sockets
    exposed = [s for s in sockets if not _loopback(s[1])]
    assert not exposed, exposed
