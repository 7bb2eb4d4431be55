"""Fast checks that an `assay` process stops when whatever started it dies (a `dvc repro`, also
through the `sh -c` dvc runs a stage in), and not under nohup. The real `dvc repro` kill is in
tests/test_lifecycle.py (slow)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from assay import lifecycle

CHILD = """
import os, sys, time
from assay import lifecycle
lifecycle.install()
try:
    print("ready", os.getpid(), flush=True)
    time.sleep(60)
except KeyboardInterrupt as stop:
    print("stopped by", stop, file=sys.stderr, flush=True)
    sys.exit(3)
"""
PARENT = """
import subprocess, sys
subprocess.Popen(sys.argv[1:]).wait()
"""


@pytest.mark.parametrize("via", ["direct", "sh -c", "nohup"])
def test_an_assay_process_stops_when_whatever_started_it_is_killed(via, tmp_path):
    """The starter (a `dvc repro`) is SIGKILLed: its `assay` stops cleanly instead of finishing
    outputs nobody records, also through the `sh -c` dvc runs it in (dash, /bin/sh, stays as its
    parent: before, the child trained on). Under nohup (SIGHUP ignored) it is left running."""
    (tmp_path / "child.py").write_text(CHILD)
    child_cmd = [sys.executable, str(tmp_path / "child.py")]
    if via == "sh -c":
        child_cmd = ["/bin/sh", "-c", " ".join(child_cmd)]
    hup = signal.SIG_IGN if via == "nohup" else signal.SIG_DFL  # not whatever pytest's is

    def set_hup():
        signal.signal(signal.SIGHUP, hup)

    log = tmp_path / "child.log"
    with open(log, "w") as err:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, *child_cmd],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=set_hup,
            start_new_session=True,
        )
    try:
        ready = parent.stdout.readline().split()  # signals installed, starter watched
        assert ready[:1] == ["ready"], log.read_text()
        child = psutil.Process(int(ready[1]))
        assert (child.parent().name() == "sh") == (via == "sh -c")
        parent.kill()
        parent.wait(10)
        _, alive = psutil.wait_procs([child], timeout=5 if via == "nohup" else 20)
        if via == "nohup":
            assert alive, "nohup asked it to outlive its starter"
        else:
            assert not alive, f"it outlived its starter ({via})"
            assert "stopped by SIGHUP" in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(parent.pid, signal.SIGKILL)


CLOCK_STEP = """
import os, sys, time
import psutil._pslinux as linux
from assay import lifecycle
lifecycle.install()
print("ready", os.getpid(), flush=True)
import threading
watched = any(t.name == "assay-watch-starter" for t in threading.enumerate())
print("watched" if watched else "not watched", flush=True)
boot = linux.boot_time()
linux.boot_time = lambda: boot + 5.0  # btime, so every create_time, moves 5 s
try:
    time.sleep(3)  # the starter watch looks every second
    print("survived", flush=True)
except KeyboardInterrupt as stop:
    print("stopped by", stop, flush=True)
"""


def test_a_step_of_the_wall_clock_is_no_death_of_the_starter(tmp_path):
    """Regression: in CI a Ray job's `assay train` stopped with "process N, which started it,
    has ended" while N, Ray's JobSupervisor, was alive: the watch compared N's start as wall
    time, which moves with the clock (/proc/stat's btime). Here the child sees psutil's boot
    time (and so every process's create_time) move 5 s while its starter lives, behind an
    `sh -c` (the watched case; `; true` keeps dash from exec'ing the command), and must go on."""
    (tmp_path / "child.py").write_text(CLOCK_STEP)

    def default_hup():  # not whatever pytest's is: ignored, the watch would never start
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    done = subprocess.run(
        [sys.executable, "-c", PARENT, "/bin/sh", "-c", f"{sys.executable} child.py; true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=default_hup,
        start_new_session=True,
    )
    lines = done.stdout.splitlines()
    assert lines[:1] and lines[0].startswith("ready"), done.stderr[-2000:]
    assert lines[1:] == ["watched", "survived"], done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize(
    "cmd, wrapper",
    [
        (["/bin/sh", "-c", "assay train"], True),
        (["bash", "--noprofile", "--norc", "-c", "assay train"], True),  # dvc with SHELL=bash
        (["/bin/sh", "-ec", "assay train"], True),  # make's .POSIX
        (["-bash"], False),  # a login shell on a terminal
        (["bash", "train.sh"], False),
        (["bash", "run.sh", "-config", "x"], False),  # the script's own options
        (["/usr/bin/fish", "-c", "assay train"], True),  # dvc with SHELL=fish
        (["dvc", "repro", "-c", "x"], False),
        ([], False),
    ],
)
def test_the_starter_is_seen_through_shell_wrappers_only(cmd, wrapper):
    assert lifecycle._shell_wrapper(cmd) is wrapper
