"""Serving under a bounded load, side by side: `assay serve` (Ray Serve, batching) with 1 and 2
replicas, and MLflow's own scoring server (`mlflow models serve`), on the same model and the same
requests. Loopback only; a fixed number of requests per server and round.

    python bench/serve.py                         # trains a digits CNN in a scratch project
    python bench/serve.py --root P --model models:/mnist-cnn@champion --dataset mnist
    python bench/serve.py --requests 3000 --concurrency 32 --rows 4 --rounds 3

Each round starts every server in turn (order rotated per round), waits for /ping, sends
`--warmup` requests, then `--requests` POSTs of `--rows` raw test images each from
`--concurrency` client threads (one keep-alive connection each), checks every answer has its rows,
and stops the server's process group, checking it gone. Printed: per server, the median over
rounds of requests/s and of the p50 and p99 latency, the ratio of requests/s to MLflow's, and the
largest batch (in requests) Ray Serve formed. The clients share the machine's cores with the
servers: on 2 cores the numbers are the whole system's, not the server's alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from assay.lifecycle import stop_group  # noqa: E402  (Assay installed, as the README's)
from assay.servers import free_port  # noqa: E402

ASSAY = [sys.executable, "-m", "assay.cli"]


def scratch_project(dataset: str) -> tuple[Path, str]:
    """A project with `dataset` prepared and a CNN trained, scored and registered."""
    root = Path(tempfile.mkdtemp(prefix="assay-bench-serve-"))
    params = (REPO / "params.yaml").read_text().replace("require_lift: true", "require_lift: false")
    (root / "params.yaml").write_text(params)
    run = ["--set", f"train.dataset={dataset}", "--set", "train.arch=cnn"]
    run += ["--set", "train.max_epochs=5", "--set", "tracking.wandb.mode=disabled"]
    for step in (["fetch", dataset], ["prepare", dataset], ["train", *run], ["evaluate", *run],
                 ["register", *run]):  # fmt: skip
        print("assay", *step[:2], flush=True)
        subprocess.run([*ASSAY, *step], cwd=root, check=True, capture_output=True)
    return root, f"models:/{dataset}-cnn@champion"


def start(cmd: list[str], root: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # mlflow's uvicorn
    with log.open("w") as sink:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"{cmd[:4]} did not start:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """The server's process group and everything under it, SIGTERM then SIGKILL
    (`lifecycle.stop_group`); then nothing of it may be left."""
    import psutil

    try:
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.Error:
        family = [proc.pid]
    stop_group(proc, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in family):
        time.sleep(0.5)
    left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    if left:
        raise SystemExit(f"processes left running after the server stopped: {left}")


def load(port: int, bodies: list[bytes], concurrency: int, rows: int) -> dict:
    """Send every body once over `concurrency` keep-alive connections; latencies in ms."""
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = iter(range(len(bodies)))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, seen = [], []
        while True:
            with lock:
                k = next(queue, None)
            if k is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", bodies[k], {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if r.status != 200 or len(json.loads(data)["predictions"]) != rows:
                errors.append(f"{r.status}: {data[:200]!r}")
            if r.getheader("assay-batch-requests"):
                seen.append(int(r.getheader("assay-batch-requests")))
        conn.close()
        with lock:
            latencies.extend(mine)
            batches.extend(seen)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} bad answers, e.g. {errors[0]}")
    lat = np.asarray(latencies)
    return {
        "rps": len(bodies) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "batch": max(batches) if batches else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, help="a project with --model (default: a scratch one)")
    ap.add_argument("--model", help="the model URI (with --root)")
    ap.add_argument("--dataset", default="digits", help="whose test images are sent")
    ap.add_argument("--requests", type=int, default=2000, help="per server and round")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16, help="client threads")
    ap.add_argument("--rows", type=int, default=1, help="images per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    a = ap.parse_args()
    if (a.root is None) != (a.model is None):
        ap.error("--root and --model go together")
    made = a.root is None
    root, model = scratch_project(a.dataset) if made else (a.root.resolve(), a.model)
    x = np.load(root / "data" / a.dataset / "test.npz")["x"]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(x), (a.requests + a.warmup, a.rows))
    bodies = [json.dumps({"inputs": x[p].tolist()}).encode() for p in picks]
    batch = ["--max-batch-size", str(a.max_batch_size), "--batch-wait-ms", str(a.batch_wait_ms)]
    mlflow = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1"]
    servers = {
        "mlflow models serve": lambda p: [*mlflow, "-p", str(p)],
        "assay serve, 1 replica": lambda p: [*ASSAY, "serve", model, "--port", str(p), *batch],
        "assay serve, 2 replicas": lambda p: [
            *ASSAY, "serve", model, "--replicas", "2", "--port", str(p), *batch
        ],
    }  # fmt: skip
    names = list(servers)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            port = free_port()
            proc = start(servers[name](port), root, port, root / "bench-serve.log")
            try:
                load(port, bodies[: a.warmup], a.concurrency, a.rows)
                res = load(port, bodies[a.warmup :], a.concurrency, a.rows)
            finally:
                stop(proc)
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['rps']:.0f} req/s, p50 {res['p50']:.1f} ms, "
                  f"p99 {res['p99']:.1f} ms", flush=True)  # fmt: skip
    base = statistics.median(x["rps"] for x in results[names[0]])
    print(f"\n{a.requests} requests of {a.rows} {a.dataset} image(s), {a.concurrency} clients, "
          f"{a.rounds} rounds (medians), {os.cpu_count()} cores, model {model}")  # fmt: skip
    print("| server | requests/s | vs MLflow | p50 ms | p99 ms | largest batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        rs = results[name]
        rps = statistics.median(x["rps"] for x in rs)
        p50 = statistics.median(x["p50"] for x in rs)
        p99 = statistics.median(x["p99"] for x in rs)
        most = max((x["batch"] or 0) for x in rs) or ""
        print(f"| {name} | {rps:.0f} | {rps / base:.2f}x | {p50:.1f} | {p99:.1f} | {most} |")
    if made:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
