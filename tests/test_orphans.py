"""Fast checks of what decides that a run or a folder was abandoned: never a live process's,
never a path that is not a scratch folder, whatever a tag says."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from assay import lifecycle, orphans


def test_an_owner_is_alive_only_if_its_pid_runs_and_started_when_recorded():
    me = lifecycle.owner_tags()
    assert lifecycle.owner_state(me) == "alive"
    reused = {**me, lifecycle.OWNER_STARTED: str(float(me[lifecycle.OWNER_STARTED]) - 3600)}
    assert lifecycle.owner_state(reused) == "dead"  # same pid, another process
    gone = {**me, lifecycle.OWNER_PID: "4194305"}  # above Linux's largest pid_max
    assert lifecycle.owner_state(gone) == "dead"
    assert lifecycle.owner_state({**me, lifecycle.OWNER_HOST: "not-" + socket.gethostname()}) == (
        "elsewhere"
    )
    assert lifecycle.owner_state({}) == "unknown"


@pytest.mark.parametrize(
    "path, kept",
    [
        ("/work/p/outputs/k/.model.1234-abcd_123", True),
        ("/work/p/outputs/k/.model.abcd_123", True),  # made before pids were in the name
        ("/work/p/outputs/k/.history.csv.99-zzzzzzzz", True),
        ("/work/p/outputs/k/model", False),
        ("/", False),
        ("outputs/k/.model.1234-abcd_123", False),  # relative: to what?
        ("/home/user/.config", False),
    ],
)
def test_only_scratch_folders_named_by_a_run_are_ever_removed(path, kept):
    tags = {orphans.SCRATCH_TAG: json.dumps([path])}
    assert (orphans.scratch_paths(tags) != []) == kept


def test_gc_without_a_store_leaves_a_young_scratch_folder_and_removes_an_old_dead_one(tmp_path):
    young = tmp_path / "outputs" / "k" / f".model.{os.getpid() + 10**7}-abcdefgh"
    old = tmp_path / "data" / ".digits.4194305-abcdefgh"
    live = tmp_path / "outputs" / "k" / f".eval.{os.getpid()}-abcdefgh"
    for p in (young, old, live):
        p.mkdir(parents=True)
    os.utime(old, (0, 0))
    os.utime(live, (0, 0))
    found = orphans.gc(None, tmp_path, min_age=600)
    actions = {f.what: f.action for f in found}
    assert actions[str(old)] == "removed"
    assert actions[str(live)] == "left: its process is running"
    assert actions[str(young)].startswith("left: only")
    assert young.exists() and live.exists() and not old.exists()


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


@pytest.mark.parametrize(
    "cmd, wrapper",
    [
        (["/bin/sh", "-c", "assay train"], True),
        (["bash", "--noprofile", "--norc", "-c", "assay train"], True),  # dvc with SHELL=bash
        (["/bin/sh", "-ec", "assay train"], True),  # make's .POSIX
        (["-bash"], False),  # a login shell on a terminal
        (["bash", "train.sh"], False),
        (["dvc", "repro", "-c", "x"], False),
        ([], False),
    ],
)
def test_the_starter_is_seen_through_shell_wrappers_only(cmd, wrapper):
    assert lifecycle._shell_wrapper(cmd) is wrapper
