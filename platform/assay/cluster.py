"""A local Ray head for users without a cluster, Ray Jobs submission, and an MLflow server.

`assay cluster up` runs `ray start --head --block` in the background on 127.0.0.1 with free ports
(GCS, dashboard, client server, agents) and records it in `<root>/.assay/cluster.json`. Every
port it opens listens on 127.0.0.1 only, unless `--host` says otherwise (see `_bind_args`);
`assay cluster down` stops that process by its id (`ray start --block` takes its Ray processes
down with it). Unlike `ray stop`, it leaves any other Ray on the machine alone.

`assay submit` sends a training as a Ray Job through the Jobs API. The job's `working_dir` is a
staged copy of what a run needs (params.yaml, experiments/, the prepared split of the data set) and
`py_modules` ships the `assay` package with its `assay.models`, so it imports on a cluster where
Assay is not installed. The job logs to the MLflow store the user sees: `$MLFLOW_TRACKING_URI` (an
`assay mlflow-server` for a multi-node cluster), else the project's own SQLite file by absolute
path, which a single-machine cluster can reach. No secret travels with a job (see `_no_secrets`):
the cluster's nodes hold their own W&B and database credentials.

Ray 2.60's `ray start` turns token authentication on only when ~/.ray/auth_token exists (a first
`ray.init()` writes it); on a machine without one the head would take any request. `up` makes
the token first (`_token_env`), and the clients here send it (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import assay
from assay.errors import UserError
from assay.lifecycle import group_alive, pid_alive, venv_command
from assay.rayenv import auth_env
from assay.servers import free_port

STATE = Path(".assay") / "cluster.json"


class ClusterError(UserError, RuntimeError):
    """A cluster problem with a clear fix (none running, not reachable, ...)."""


@dataclass
class Head:
    pid: int
    address: str  # GCS, for `ray.init(address=...)` and `ray start --address`
    dashboard: str  # http, for the Jobs API and the browser
    log: str

    @classmethod
    def load(cls, root: Path) -> Head | None:
        path = root / STATE
        if not path.exists():
            return None
        head = cls(**json.loads(path.read_text()))
        if not pid_alive(head.pid):
            path.unlink()
            return None
        return head


def up(
    root: Path, num_cpus: int | None = None, timeout: float = 90, host: str = "127.0.0.1"
) -> Head:
    """Start a local head (free ports, dashboard on) unless one is running; every port on
    127.0.0.1 unless `host` is another address (then see `_bind_args`)."""
    running = Head.load(root)
    if running:
        return running
    bind, env_extra, reach = _bind_args(host)
    gcs, dash = free_port(), free_port()
    cmd = [
        venv_command("ray"),
        "start",
        "--head",
        "--block",
        *bind,
        f"--port={gcs}",
        "--include-dashboard=true",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    (root / STATE).parent.mkdir(parents=True, exist_ok=True)
    log = root / ".assay" / "ray-head.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env_extra, **_token_env()}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    head = Head(proc.pid, f"{reach}:{gcs}", f"http://{reach}:{dash}", str(log))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"`ray start` exited with {proc.returncode}; see {log}")
        if _jobs_api_ready(head.dashboard):
            (root / STATE).write_text(json.dumps(head.__dict__, indent=2))
            return head
        time.sleep(0.5)
    _stop_pid(proc.pid)
    raise ClusterError(f"the Ray head did not come up in {timeout:.0f} s; see {log}")


def _token_env() -> dict[str, str]:
    """RAY_AUTH_MODE=token for the head, with the token made if there is none yet; a mode the
    user set (RAY_AUTH_MODE=disabled included) is theirs to keep."""
    if os.environ.get("RAY_AUTH_MODE"):
        return {}
    made = subprocess.run(
        [venv_command("ray"), "get-auth-token", "--generate"], capture_output=True, text=True
    )  # it prints the token: kept out of the terminal and the logs
    if made.returncode != 0:
        raise ClusterError(f"`ray get-auth-token --generate` failed: {made.stderr.strip()[-500:]}")
    return {"RAY_AUTH_MODE": "token"}


def _bind_args(host: str) -> tuple[list[str], dict[str, str], str]:
    """`ray start` options and environment that make the head listen on `host`, and the address
    this machine reaches it at.

    `--node-ip-address=127.0.0.1` alone is not enough: on Linux `ray start` turns a loopback
    address into the machine's LAN address (`services.resolve_ip_for_localhost`), and the GCS,
    raylet, agents and workers then listen there or on all interfaces. Ray keeps 127.0.0.1 when
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its single-machine mode (the default on macOS and
    Windows), and then binds every server to it. That mode refuses `ray start --address`, so
    such a head takes no other nodes: a multi-node cluster needs --host.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ClusterError(
            f"--host: {host!r} is not an IP address; use 127.0.0.1 (the default: this machine "
            "only), this machine's address on a network, or 0.0.0.0 (every interface)"
        ) from None
    if ip.is_loopback:
        args = ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
        return args, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, "127.0.0.1"
    if ip.is_unspecified:  # Ray picks the node's address; everything listens everywhere
        return ["--dashboard-host=0.0.0.0"], {}, "127.0.0.1"
    return [f"--node-ip-address={host}", f"--dashboard-host={host}"], {}, host


def _jobs_api_ready(dashboard: str) -> bool:
    try:
        client(dashboard).list_jobs()
        return True
    except Exception:
        return False


# Seconds a head's processes get after SIGTERM before SIGKILL: `ray stop`'s own grace period.
# (`down` waited 60 s: under the test suite's load a head once waited all of it for one process.)
GRACE_S = 16.0


def down(root: Path, timeout: float = GRACE_S) -> Head | None:
    from assay import nodes

    nodes.stop_all(root)  # the nodes `assay cluster add-node` started, before their head
    head = Head.load(root)
    if head is None:
        return None
    _stop_pid(head.pid, timeout)
    (root / STATE).unlink(missing_ok=True)
    # `ray start` notes its head here for `ray.init()` to find; `ray stop` would remove it
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    port = head.address.rsplit(":", 1)[1]
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink(missing_ok=True)
    return head


def _stop_pid(pid: int, timeout: float = GRACE_S) -> None:
    """Stop the head `ray start --block` (pid) runs, and everything in its process group.

    Like `ray stop`, but only for this head: SIGTERM to the GCS, raylet, dashboard and workers
    (all in the group of its own session). `ray start` itself is killed first: on SIGTERM it
    would try to drain the node through a GCS that is stopping and wait 30 s for nothing.
    Whatever outlives `timeout` gets SIGKILL.
    """
    try:
        os.kill(pid, signal.SIGKILL)
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline and group_alive(pid):
        _reap(pid)
        time.sleep(0.3)
    if group_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    """`ray start` is our own child when `up` ran in this process: until it is reaped, its zombie
    keeps the group alive and `_stop_pid` would wait out its whole timeout."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not ours: its own parent (or init) reaps it
        pass


# ------------------------------------------------------------------------------------ jobs
def dashboard_address(root: Path, address: str | None) -> str:
    """--address, else $RAY_ADDRESS (an http one), else the head `assay cluster up` started."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return address if "://" in address else f"http://{address}"
    head = Head.load(root)
    if head is None:
        raise ClusterError(
            "no Ray cluster: run `assay cluster up` (a local head), or pass --address "
            "http://HEAD:8265 (the dashboard address) or set RAY_ADDRESS"
        )
    return head.dashboard


def client(dashboard: str):
    auth_env()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard)


def _stage(root: Path, dataset: str, experiment: str | None) -> Path:
    """What a job needs, in a fresh folder: the job's working_dir."""
    stage = Path(tempfile.mkdtemp(prefix="assay-job-"))
    for name in ("params.yaml", "dvc.yaml"):
        if (root / name).exists():
            shutil.copy2(root / name, stage / name)
    if (root / "experiments").is_dir():
        shutil.copytree(root / "experiments", stage / "experiments", ignore=_NO_BYTECODE)
    if experiment and Path(experiment).is_file():  # an experiment file outside experiments/
        shutil.copy2(experiment, stage / Path(experiment).name)
    data = root / "data" / dataset
    if not (data / "meta.json").exists():
        raise ClusterError(
            f"data/{dataset} is not prepared: run `dvc repro prepare@{dataset}` before submitting"
        )
    shutil.copytree(data, stage / "data" / dataset)
    return stage


_NO_BYTECODE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _package(into: Path) -> Path:
    """The `assay` package as one folder for `py_modules`, `assay.models` inside it: installed
    from a wheel it is there already, in an editable install it is the repo's models/ folder."""
    pkg = into / "assay"
    shutil.copytree(Path(assay.__file__).parent, pkg, ignore=_NO_BYTECODE)
    if not (pkg / "models" / "__init__.py").exists():
        models = importlib.util.find_spec("assay.models").origin  # imports no torch
        shutil.copytree(Path(models).parent, pkg / "models", ignore=_NO_BYTECODE)
    return pkg


def _note(message: str) -> None:
    sys.stderr.write(f"note: {message}\n")


def submit(
    root: Path,
    cfg,
    args: list[str],
    address: str | None = None,
    experiment: str | None = None,
    command: str = "train",
    storage: str | None = None,
    note=_note,
) -> tuple[str, str]:
    """Submit `assay COMMAND ARGS` (a training, or a sweep) as a Ray Job; returns (job id,
    dashboard address). `storage`: a sweep's default study storage (the user's own optuna.db),
    passed on when the cluster is on this machine; a remote job keeps its own default. `note`
    is told what was kept out of the job (credentials)."""
    dashboard = dashboard_address(root, address)
    jobs = client(dashboard)
    uri = cfg.tracking.store_uri(root)
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    local = any(h in dashboard for h in ("127.0.0.1", "localhost"))
    if local:  # the user's W&B folder, as for a run of their own; a remote job keeps its own
        env["WANDB_DIR"] = str(root.resolve())
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):  # never WANDB_API_KEY
        if var in os.environ:
            env[var] = os.environ[var]
    mode = os.environ.get("WANDB_MODE") or cfg.tracking.wandb.mode
    if os.environ.get("WANDB_API_KEY") and mode == "online":
        note(
            "W&B: WANDB_API_KEY is not sent with the job; the cluster uses its own credentials "
            "(WANDB_API_KEY in the nodes' environment, or `wandb login` on each node)"
        )
    env, args = _no_secrets(env, args, note)
    uri = env["MLFLOW_TRACKING_URI"]
    python = sys.executable if local else "python"  # a remote cluster's own interpreter
    if storage and local:  # the study in the user's own optuna.db, as for a sweep run here
        args = [*args, "--storage", storage]
    entrypoint = " ".join([python, "-m", "assay.cli", command, *map(_quote, args)])
    stage = _stage(root, cfg.train.dataset, experiment)
    package = Path(tempfile.mkdtemp(prefix="assay-pkg-"))
    try:
        runtime_env = {
            "working_dir": str(stage),
            "py_modules": [str(_package(package))],
            "env_vars": env,
        }
        job_id = jobs.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            metadata={"assay.key": cfg.train.key, "mlflow_tracking_uri": uri, "kind": command},
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # uploaded by now
        shutil.rmtree(package, ignore_errors=True)
    return job_id, dashboard


# A job's entrypoint, runtime_env and metadata go to anyone who can query the Jobs API, and into
# logs under /tmp/ray/session_*/ that outlive the cluster: no credential may travel in them.
_CREDENTIAL = re.compile(r"KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL", re.IGNORECASE)
# scheme://user:password@ -> scheme://user@ (a password with "/" or "@" in it is %-escaped)
_URL_PASSWORD = re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://[^:@/\s]*):[^@/\s]*@", re.IGNORECASE)


def _no_secrets(env: dict[str, str], args: list[str], note) -> tuple[dict[str, str], list[str]]:
    """`env` without credential-like variables, and `env`'s values and `args` without the
    passwords of URLs (postgresql://u:pw@host/db, http://u:pw@host); `note` hears of each."""
    fix = (
        "give the cluster's nodes their own credentials (PGPASSWORD or ~/.pgpass for "
        "PostgreSQL, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for an MLflow server)"
    )
    kept = {}
    for var, value in env.items():
        if _CREDENTIAL.search(var):
            note(f"{var} is not sent with the job: {fix}")
            continue
        kept[var] = _URL_PASSWORD.sub(r"\g<keep>@", value)
        if kept[var] != value:
            note(f"{var}: the password in it is not sent (the job gets {kept[var]}); {fix}")
    safe = [_URL_PASSWORD.sub(r"\g<keep>@", a) for a in args]
    for before, after in zip(args, safe, strict=True):
        if before != after:
            note(f"{after}: the password in it is not sent with the job; {fix}")
    return kept, safe


def _quote(arg: str) -> str:
    return shlex.quote(arg)


def follow(dashboard: str, job_id: str, write=sys.stdout.write) -> str:
    """Stream a job's logs until it ends; returns its final status (SUCCEEDED, FAILED, ...)."""
    jobs = client(dashboard)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    return wait(dashboard, job_id)


def wait(dashboard: str, job_id: str, timeout: float = 3600) -> str:
    jobs = client(dashboard)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(jobs.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise ClusterError(f"job {job_id} still running after {timeout:.0f} s")
