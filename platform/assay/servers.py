"""The web servers a user looks through, as processes of their own: MLflow's server (its UI and
REST API) and optuna-dashboard. Each runs in its own process group, so that stopping one reaches
every worker it started, and dies with the `assay` process that started it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from assay import lifecycle
from assay.errors import UserError


class ServerError(UserError):
    """A server that could not start (its port taken, or it exited), with what to do."""


def mlflow_cmd(backend: str, host: str, port: int, artifacts: Path | None = None) -> list[str]:
    """`mlflow server` on `backend` (runs and registry). `artifacts`: where the server keeps the
    artifacts of runs logged through it (`--artifacts-destination`); runs logged straight into a
    file store keep theirs where they are, and the server reads them there."""
    cmd = [lifecycle.venv_command("mlflow"), "server", "--host", host, "--port", str(port)]
    cmd += ["--backend-store-uri", backend, "--workers", "1"]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    return cmd


def dashboard_cmd(storage: str, host: str, port: int) -> list[str]:
    return [
        lifecycle.venv_command("optuna-dashboard"),
        storage,
        "--host",
        host,
        "--port",
        str(port),
        "--quiet",
    ]


def port_free(host: str, port: int) -> bool:
    """Nothing listens on it. (SO_REUSEADDR, as the servers bind: a port a stopped server left
    in TIME_WAIT is free to them.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (a server bound there takes it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(cmd: list[str]) -> subprocess.Popen:
    """Start a server in its own process group; it gets SIGTERM should we die outright.

    MLflow 3's server also starts a job runner and seven huey consumers (GenAI scorers, trace
    roll-ups: nothing Assay logs), ~30 s of CPU at start and polling after: off unless the user
    sets MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true."""
    env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OPTUNA_DASHBOARD_DISABLE_TELEMETRY": "1",
    }
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, preexec_fn=lifecycle.die_with_parent
    )


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen


# loopback never goes through $http_proxy
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_ready(servers: list[Server], timeout: float = 120.0) -> None:
    """Until each server answers HTTP at its address; a ServerError if one exits first."""
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        s = waiting[0]
        if s.proc.poll() is not None:
            raise ServerError(f"{s.name} exited with code {s.proc.returncode} before answering")
        try:
            with _direct.open(s.url, timeout=2):
                waiting.pop(0)
                continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{s.name} did not answer at {s.url} within {timeout:.0f} s")
        time.sleep(0.3)


def serve(servers: list[Server]) -> int:
    """Wait until one server exits or we are stopped (Ctrl-C, SIGTERM, SIGHUP, our parent's
    death), then stop them all. 0 when stopped; a server's own exit code (1 for 0: it was not
    asked to stop) when one ended by itself."""
    exited = None
    try:
        while exited is None:
            exited = next((s for s in servers if s.proc.poll() is not None), None)
            if exited is None:
                time.sleep(0.5)
        code = exited.proc.returncode
        print(f"assay: {exited.name} exited (code {code}); stopping the rest", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        for s in servers:
            lifecycle.stop_group(s.proc)
    return (exited.proc.returncode or 1) if exited else 0
