"""Fast checks of what decides that a run or a folder was abandoned: never a live process's,
never a path that is not a scratch folder, whatever a tag says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from assay import lifecycle, orphans


def test_an_owner_is_alive_only_if_its_pid_runs_and_started_when_recorded():
    me = lifecycle.owner_tags()
    assert lifecycle.owner_state(me) == "alive"
    # a run tagged before start marks were (test below): its wall-clock start decides
    legacy = {k: v for k, v in me.items() if k != lifecycle.OWNER_BOOT_START}
    reused = {
        **legacy,
        lifecycle.OWNER_STARTED: str(float(me[lifecycle.OWNER_STARTED]) - 3600),
    }
    assert lifecycle.owner_state(reused) == "dead"  # same pid, another process
    gone = {**me, lifecycle.OWNER_PID: "4194305"}  # above Linux's largest pid_max
    assert lifecycle.owner_state(gone) == "dead"
    assert lifecycle.owner_state({**me, lifecycle.OWNER_HOST: "not-" + socket.gethostname()}) == (
        "elsewhere"
    )
    assert lifecycle.owner_state({}) == "unknown"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start marks read /proc")
def test_a_step_of_the_wall_clock_leaves_a_live_owner_alive():
    """The owner is told by its boot and its start in ticks since boot, not by wall time: a
    clock that moved since the run began (a live owner's create_time then reads seconds off)
    does not make `runs gc` close a running run. Another boot, or another start, is dead."""
    me = lifecycle.owner_tags()
    boot, ticks = me[lifecycle.OWNER_BOOT_START].rsplit(":", 1)
    # the mark is stat(5)'s starttime: psutil's start, less its boot time, to the clock's second
    since_boot = psutil.Process().create_time() - psutil.boot_time()
    assert abs(int(ticks) / os.sysconf("SC_CLK_TCK") - since_boot) < 2
    stepped = {**me, lifecycle.OWNER_STARTED: str(float(me[lifecycle.OWNER_STARTED]) - 5)}
    assert lifecycle.owner_state(stepped) == "alive"
    other = {**me, lifecycle.OWNER_BOOT_START: f"{boot}:{int(ticks) + 1}"}
    assert lifecycle.owner_state(other) == "dead"  # the same pid, started a tick later
    rebooted = {**me, lifecycle.OWNER_BOOT_START: f"another-boot:{ticks}"}
    assert lifecycle.owner_state(rebooted) == "dead"
    old = {k: v for k, v in me.items() if k != lifecycle.OWNER_BOOT_START}  # a run from before
    assert lifecycle.owner_state(old) == "alive"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start marks read /proc")
def test_a_killed_owner_not_yet_reaped_is_dead():
    """A zombie (killed, its parent yet to reap it) still has its pid and its start: dead."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = {
            lifecycle.OWNER_HOST: socket.gethostname(),
            lifecycle.OWNER_PID: str(child.pid),
            lifecycle.OWNER_STARTED: f"{psutil.Process(child.pid).create_time():.2f}",
            lifecycle.OWNER_BOOT_START: lifecycle.start_mark(child.pid),
        }
        assert lifecycle.owner_state(tags) == "alive"
        child.kill()
        deadline = time.time() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < deadline, "never a zombie"
            time.sleep(0.05)
        assert lifecycle.owner_state(tags) == "dead"
    finally:
        child.kill()
        child.wait()


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
