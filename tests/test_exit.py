"""How an `assay` process ends: `lifecycle.quick_exit` skips only the interpreter's freeing of
objects (~1 s once torch and Lightning are loaded), not what a normal exit owes."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import REPO

ENDING = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from assay import lifecycle

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))

def later():
    time.sleep(0.5)
    (out / "thread").write_text("done")

threading.Thread(target=later).start()
# a pool left open (MLflow's async logging keeps two): its idle workers end only when told to,
# as the interpreter tells them before it waits for threads
pool = ThreadPoolExecutor(2)
pool.submit(lambda: (out / "pool").write_text("done"))
print("buffered, not yet flushed", end="")
lifecycle.quick_exit(3)
"""


def test_quick_exit_waits_for_threads_runs_atexit_flushes_and_keeps_the_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", ENDING, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, not yet flushed"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "pool").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_assay_command_keeps_its_exit_codes_and_output(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cli = [sys.executable, "-m", "assay.cli"]

    def run(*args):
        return subprocess.run([*cli, *args], cwd=tmp_path, capture_output=True, text=True)

    ok = run("config", "--run", "mnist-cnn")
    assert ok.returncode == 0, ok.stderr
    assert "mnist" in ok.stdout
    bad = run("config", "--set", "train.lr=abc")
    assert bad.returncode == 2
    assert "train.lr" in bad.stderr and "Traceback" not in bad.stderr
    usage = run("no-such-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr
