"""How an `assay` process starts and stops: who owns a run, signals, and dying with the parent.

A process killed outright (SIGKILL, the OOM killer, a lost machine) runs no clean-up. Every run
therefore records its owner (`owner_tags`: host, pid and the process's start time, so a reused
pid is not taken for the owner) and the next run of the same key, or `assay runs gc`, can tell
it was abandoned (`owner_state`) and close it (see `assay.orphans`).

Signals that can be caught are turned into a clean stop (`install`): SIGTERM and SIGHUP raise
KeyboardInterrupt in the main thread like Ctrl-C, so `with`/`finally` blocks end the run KILLED
and remove scratch folders. The Linux parent-death signal makes `assay` stop when whatever
started it (`dvc repro`) dies, instead of finishing outputs nobody records.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

OWNER_HOST, OWNER_PID, OWNER_STARTED = "assay.owner.host", "assay.owner.pid", "assay.owner.started"
OWNER_BOOT_START = "assay.owner.boot_start"  # Linux: "<boot id>:<start, clock ticks since boot>"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_S = 30.0  # seconds a stop's clean-up runs undisturbed by repeated signals
_stopped_by: signal.Signals | None = None
_stopped_at = 0.0
_installed = False
_watching = False  # a thread watches this process's starter (once a process)


# ------------------------------------------------------------------------------------ ownership
def _started(pid: int) -> float:
    return psutil.Process(pid).create_time()


@functools.cache
def _boot_id() -> str | None:
    """This boot's id (Linux), read once: it changes only with the machine's next boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def start_mark(pid: int) -> str | None:
    """Linux: which boot, and when in it (clock ticks since boot, from /proc/PID/stat), `pid`
    started: the same for the same process whatever the wall clock does, and exact. psutil's
    create_time() adds the boot's wall time, /proc/stat's btime, which the kernel recomputes in
    whole seconds from the clock on every read: a step or a slew of the clock moves it (in CI
    a live starter was taken for dead so). None where there is no /proc, or for a process gone
    or a zombie."""
    boot = _boot_id()
    if boot is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name, in (), may hold spaces
    if fields[0] == b"Z":  # a zombie: killed, not yet reaped
        return None
    return f"{boot}:{int(fields[19])}"  # field 22 of stat(5), `starttime`


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the holder of a run (or of a scratch folder)."""
    pid = os.getpid()
    tags = {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(pid),
        # wall time: what people read, and the check where there is no start mark
        OWNER_STARTED: f"{_started(pid):.2f}",
    }
    mark = start_mark(pid)
    if mark:
        tags[OWNER_BOOT_START] = mark
    return tags


def owner_state(tags: dict[str, str]) -> str:
    """'alive', 'dead', 'elsewhere' (another host: cannot be checked from here) or 'unknown'
    (no owner recorded: a run from before owners were, or from another tool)."""
    if OWNER_PID not in tags:
        return "unknown"
    if tags.get(OWNER_HOST) != socket.gethostname():
        return "elsewhere"
    pid = int(tags[OWNER_PID])
    if OWNER_BOOT_START in tags and _boot_id():  # exact, whatever the clock did
        return "alive" if start_mark(pid) == tags[OWNER_BOOT_START] else "dead"
    return "alive" if pid_alive(pid, float(tags[OWNER_STARTED])) else "dead"


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Is `pid` running, and (given `started`) the same process that started then? A zombie
    (killed, not yet reaped) counts as dead."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        # create_time moves with btime (`start_mark`), by a second as the clock is slewed; a
        # reused pid starts much later
        return started is None or abs(p.create_time() - started) < 2.0
    except psutil.NoSuchProcess:
        return False


def owner_note(tags: dict[str, str], closed_by: str, at: str) -> str:
    return (
        f"process {tags.get(OWNER_PID)} on {tags.get(OWNER_HOST)} ended (killed?) without "
        f"ending this run; closed by {closed_by} at {at}"
    )


# -------------------------------------------------------------------------------------- signals
def _on_signal(signum: int, frame) -> None:
    global _stopped_by, _stopped_at
    # Already stopping: let the clean-up finish, unless it has had its time (then something
    # swallowed the KeyboardInterrupt, and a repeated signal means it).
    if _stopped_by is not None and time.monotonic() - _stopped_at < GRACE_S:
        return
    _stopped_by, _stopped_at = signal.Signals(signum), time.monotonic()
    print(f"\nassay: {_stopped_by.name}: stopping cleanly", file=sys.stderr, flush=True)
    raise KeyboardInterrupt(_stopped_by.name)


def stopped_by() -> signal.Signals | None:
    """The signal that asked this process to stop, if one did (see `install`)."""
    return _stopped_by


def stop_reason(exc: BaseException | None) -> str | None:
    """Why `exc` ended the work, if it means "this process was told to stop" (the run ends
    KILLED, not FAILED): a signal `install` caught; Ctrl-C; a Ray worker's SIGTERM, which Ray's
    own handler turns into `SystemExit` marked `ray_terminate_msg` (Ray ends a dead driver's
    workers so); Lightning's `SIGTERMException`, raised at the next batch after its handler saw
    SIGTERM. None: an error of the work's own."""
    if _stopped_by is not None:
        return f"stopped by {_stopped_by.name}"
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C where no handler was installed, or raised
        return f"KeyboardInterrupt: {exc}"
    ray_msg = getattr(exc, "ray_terminate_msg", None)
    if isinstance(exc, SystemExit) and ray_msg:
        return f"stopped by Ray: {ray_msg}"
    # by name: this module loads before (and without) Lightning
    if isinstance(exc, SystemExit) and type(exc).__name__ == "SIGTERMException":
        return "stopped by SIGTERM"
    return None


def install() -> None:
    """Turn SIGTERM, SIGHUP and SIGINT into KeyboardInterrupt (repeats are ignored for GRACE_S
    while the first one's clean-up runs), and stop with SIGHUP when whatever started this
    process dies (`watch_starter`).

    A signal someone chose to ignore stays ignored: under `nohup`, SIGHUP is, and so the
    starter's death is too (nohup asks to outlive the terminal and the shell that started us).
    Lightning adds its own SIGTERM handler during a fit and calls ours from it; a Ctrl-C or a
    signal there ends the fit with `sys.exit(1)`, which `TrackedRun` also ends KILLED because
    `stopped_by()` says why. ASSAY_NO_SIGNALS=1 leaves all signals as they are."""
    global _installed
    if os.environ.get("ASSAY_NO_SIGNALS"):
        return
    _installed = True
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _on_signal)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        die_with_parent(signal.SIGHUP)
        watch_starter()


SHELLS = {"sh", "ash", "dash", "bash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh"}


def starter(proc: psutil.Process | None = None) -> psutil.Process | None:
    """The process that started `proc` (this one by default), seen through the `sh -c CMD`
    wrappers between them: `dvc repro` runs a stage as `$SHELL -c CMD`, and dash (Debian's
    /bin/sh, which dvc uses when SHELL is unset) stays as the parent instead of exec'ing CMD,
    so the parent-death signal alone would wait for that shell, which outlives a killed dvc."""
    proc = proc or psutil.Process()
    with contextlib.suppress(psutil.Error):
        parent = proc.parent()
        while parent is not None:
            cmd = parent.cmdline()
            if not _shell_wrapper(cmd):
                return parent
            parent = parent.parent()
    return None


def _shell_wrapper(cmd: list[str]) -> bool:
    """`sh -c CMD`, `bash --norc -c CMD`, `sh -ec CMD` (make's .POSIX), but not a shell reading
    a script or a terminal."""
    if not cmd or os.path.basename(cmd[0]).lstrip("-") not in SHELLS:
        return False
    for arg in cmd[1:]:  # options come first; the first word that is none is a script or CMD
        if not arg.startswith("-"):
            return False
        if not arg.startswith("--") and "c" in arg[1:]:
            return True
    return False


def watch_starter(every: float = 1.0) -> None:
    """Send this process SIGHUP (a clean stop, see `install`) once its starter has died. The
    kernel's parent-death signal (`die_with_parent`) covers a direct parent at once; this daemon
    thread covers one behind a shell wrapper. psutil has no wait for a non-child, so it polls."""
    global _watching
    boss = None if _watching else starter()
    if boss is None or boss.pid in (1, os.getppid()):  # none, or the kernel's signal covers it
        return
    _watching = True

    # By its start in ticks since boot (`start_mark`), which the wall clock leaves alone:
    # comparing wall-clock create_time took a live starter (a Ray job's JobSupervisor) for dead
    # in CI. Without /proc, psutil's own identity check.
    mark = start_mark(boss.pid)

    def alive() -> bool:
        if mark is not None:
            return start_mark(boss.pid) == mark
        try:
            return boss.is_running() and boss.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # not ours to read: no sign that it died
            return True

    def watch() -> None:
        while alive():
            time.sleep(every)
        print(
            f"\nassay: process {boss.pid}, which started it, has ended",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="assay-watch-starter", daemon=True).start()


def reclaim_sigterm() -> None:
    """After a library took SIGTERM over (`ray.init` makes it `sys.exit`, which would end the
    run FAILED), give it back to `install`'s handler, if that was installed."""
    main = threading.current_thread() is threading.main_thread()  # signal.signal: main only
    if _installed and main and signal.getsignal(signal.SIGTERM) != _on_signal:
        signal.signal(signal.SIGTERM, _on_signal)


def venv_command(name: str) -> str:
    """A command of this environment (beside this Python: ray, mlflow, dvc, ...), else whatever
    PATH finds: a child process runs the same install as its parent."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: deliver `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG, which
    no library wraps; psutil does not). Elsewhere a no-op. Safe as a `preexec_fn`."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# ------------------------------------------------------------------------ a child process group
def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop `proc`, started with `start_new_session=True`, and everything it started (`stop_tree`).
    Returns `proc`'s exit code."""
    stop_tree(proc.pid, timeout, leader=proc)
    return proc.wait()


def stop_tree(pid: int, timeout: float = 10.0, leader: subprocess.Popen | None = None) -> None:
    """Stop the process `pid`, the leader of its own process group, and everything it started:
    SIGTERM to the group and to each descendant (one may have left the group: Ray's workers
    do), SIGKILL to whatever is left after `timeout` seconds. `leader`: `pid` as our child's
    Popen, waited on (reaped) as it goes; a pid known only by number is reaped if it is ours."""
    try:
        family = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []

    def leader_done(wait: float) -> bool:
        if leader is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                leader.wait(wait)
            return leader.returncode is not None
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our child's zombie would keep the group alive
            if not group_alive(pid) or time.monotonic() >= deadline:
                return not pid_alive(pid)
            time.sleep(0.3)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        done = leader_done(wait)
        _, family = psutil.wait_procs(family, timeout=wait if done else 0)
        if done and not family and not group_alive(pid):
            break


def group_alive(pgid: int) -> bool:
    """Is any process of the process group `pgid` still there?"""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ------------------------------------------------------------------------------------- the end
def quick_exit(code: int) -> None:
    """End this process with `code` as a normal exit does, minus freeing every object of every
    module: what a normal exit does after the threads and the `atexit` handlers (W&B's and MLflow's
    flushes, Ray's shutdown, `weakref.finalize`'s clean-ups) have run. With torch and Lightning
    loaded that last step alone takes ~1.1 s (measured: exit after `import lightning.pytorch` 1.09
    s, 0.03 s without it), paid by every `assay train`, `evaluate` and `predict` (mypy ends its
    runs the same way, for the same reason). Files are written whole in `with` blocks here, so
    nothing is left for the objects' finalizers to flush. Under a profiler or a tracer
    (`python -m cProfile`, a debugger) it exits normally: they write their results after."""
    import atexit

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)

    # What the interpreter does first at exit (private, but the very call it makes): tell thread
    # pools to let their idle workers go, then wait for every non-daemon thread. Joining the
    # threads alone would wait forever on a pool left open (MLflow's async logging keeps two).
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
