"""What `assay train` costs over a hand-written PyTorch loop of the same model, data and epochs.

    python bench/overhead.py --root P                  # 3 interleaved rounds, 2 epochs each
    python bench/overhead.py --root P --pairs 5 --epochs 3

P is a project folder with MNIST prepared (`dvc repro prepare@mnist`, or `assay fetch mnist &&
assay prepare mnist`); P itself is not written to. Each round runs, in turn and in fresh processes:
  - `assay train --run mnist-cnn --set train.max_epochs=E`, full tracking on (MLflow, W&B offline,
    the logged model, the learning curve), in a scratch project beside P's data, whose MLflow
    store already exists (a user's second run, not the first one's schema migrations);
  - the loop below (`--loop`): the same CNN, data, batch size (128), Adam with one-cycle, seed, a
    validation pass per epoch and a best checkpoint, in PyTorch alone;
  - the same loop with the net and its input channels-last, as Assay's CNN holds them: what a
    user who knows that trick gets, so Assay's fixed cost is seen apart from its faster epochs.
Each side leads a round in turn, so none always runs on a warmer machine. Printed: each
round's wall and CPU times and assay's ratios to each loop, each side's median epoch, the fixed
cost (wall minus its epochs), and where `assay train`'s fixed cost went: start-up (the
interpreter, imports, the config), the phases it records in run.json (`timings`: data and
model, tracking start, fit set-up, model logging, ...) and its end (closing the runs, exit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the baseline
def loop(data: Path, epochs: int, out: Path, channels_last: bool = False) -> None:
    """The hand-written loop: torch and numpy only, what a careful user writes. Prints a JSON
    line: when it started (after its imports), each epoch's seconds and the final val accuracy.
    `channels_last`: the net and its input in NHWC memory order, as Assay's CNN holds them."""
    started = time.time()
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    imported = time.time()
    torch.manual_seed(42)

    def split(name: str) -> TensorDataset:
        with np.load(data / f"{name}.npz") as d:
            x = torch.from_numpy(d["x"]).float() / 255.0
            return TensorDataset(x, torch.from_numpy(d["y"]).long())

    train, val = split("train"), split("val")
    net = nn.Sequential(  # params.yaml's cnn: channels [32, 64], kernel 3, hidden 128, dropout .25
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(64 * 7 * 7, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(42)
    train_dl = DataLoader(train, batch_size=128, shuffle=True, generator=g)
    val_dl = DataLoader(val, batch_size=1024)
    opt = torch.optim.Adam(net.parameters(), lr=0.003)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.003, total_steps=epochs * len(train_dl)
    )
    best, seconds, acc = float("inf"), [], 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        net.train()
        for x, y in train_dl:
            loss = F.cross_entropy(net(x.contiguous(memory_format=fmt)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        total, right, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val_dl:
                logits = net(x.contiguous(memory_format=fmt))
                total += F.cross_entropy(logits, y, reduction="sum").item()
                right += (logits.argmax(1) == y).sum().item()
                n += len(y)
        if total / n < best:
            best, acc = total / n, right / n
            torch.save(net.state_dict(), out / "best.pt")
        seconds.append(time.perf_counter() - t)
    times = {"started_at": started, "imported_at": imported, "epochs": seconds}
    print(json.dumps({**times, "acc": acc}))


# ------------------------------------------------------------------------------- the driver
def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, float, str]:
    """Run `cmd`; (Unix start, wall seconds, CPU seconds of it and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, t = time.time(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return start, wall, cpu, done.stdout


def scratch_project(root: Path, where: Path) -> Path:
    """A project that shares `root`'s prepared MNIST (a link) and has an MLflow store already."""
    project = where / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    (project / "data" / "mnist").symlink_to((root / "data" / "mnist").resolve())
    code = "from assay.tracking import ensure_store; ensure_store('sqlite:///mlflow.db')"
    subprocess.run([sys.executable, "-c", code], cwd=project, check=True, capture_output=True)
    return project


def assay_side(project: Path, epochs: int, env: dict) -> dict:
    cmd = ["assay", "train", "--run", "mnist-cnn", "--set", f"train.max_epochs={epochs}"]
    start, wall, cpu, _ = timed(cmd, project, env)
    info = json.loads((project / "outputs/mnist-cnn/model/run.json").read_text())
    t = info["timings"]
    phases = {"start-up (interpreter, imports, config)": t["started_at"] - start}
    phases.update({k: v for k, v in t["phases"].items() if k != "fit"})
    fit_rest = t["phases"]["fit"] - sum(t["epochs"])
    phases["fit set-up and tear-down (outside epochs)"] = fit_rest
    phases["end (closing runs, exit)"] = start + wall - t["ended_at"]
    acc = info["best_val"].get("val/acc", float("nan"))
    return {"wall": wall, "cpu": cpu, "epochs": t["epochs"], "phases": phases, "acc": acc}


def loop_side(root: Path, epochs: int, out: Path, env: dict, channels_last: bool) -> dict:
    cmd = [sys.executable, __file__, "--loop", "--data", str(root / "data/mnist")]
    cmd += ["--epochs", str(epochs), "--out", str(out)]
    cmd += ["--channels-last"] if channels_last else []
    start, wall, cpu, stdout = timed(cmd, REPO, env)
    r = json.loads(stdout.strip().splitlines()[-1])
    phases = {"start-up (interpreter, imports)": r["imported_at"] - start}
    return {"wall": wall, "cpu": cpu, "epochs": r["epochs"], "phases": phases, "acc": r["acc"]}


SIDES = {
    "assay": "assay train",
    "loop": "hand-written loop",
    "loop_nhwc": "hand-written loop, channels-last",
}
# the order of assay train's phases, as they happen (run.json's keys are sorted)
PHASES = [
    "start-up (interpreter, imports, config)",
    "data and model",
    "provenance",
    "tracking start",
    "fit set-up and tear-down (outside epochs)",
    "tracking after the fit",
    "best checkpoint",
    "refit",
    "model logging",
    "learning curve",
    "end (closing runs, exit)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="a project with MNIST prepared")
    ap.add_argument("--pairs", type=int, default=3, help="rounds, each running every side once")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        return loop(args.data, args.epochs, args.out, args.channels_last)
    root = args.root.resolve()
    if not (root / "data/mnist/meta.json").exists():
        sys.exit(f"{root}/data/mnist is not prepared: run `dvc repro prepare@mnist` there first")

    env = {**os.environ, "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)  # W&B as a user gets it: params.yaml's mode (offline)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        project = scratch_project(root, Path(tmp))
        for i in range(args.pairs):
            order = list(SIDES)[i % 3 :] + list(SIDES)[: i % 3]  # each side leads in turn
            got = {}
            for side in order:
                print(f"round {i + 1}/{args.pairs}: {SIDES[side]} ...", file=sys.stderr, flush=True)
                if side == "assay":
                    got[side] = assay_side(project, args.epochs, env)
                else:
                    got[side] = loop_side(root, args.epochs, Path(tmp), env, side == "loop_nhwc")
            rounds.append(got)
    report(rounds, args.epochs)


def report(rounds: list[dict], epochs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    med = statistics.median
    console = Console()
    table = Table(title=f"assay train against hand-written loops: mnist-cnn, {epochs} epochs")
    table.add_column("round", justify="right")
    for side in SIDES:
        table.add_column(f"{SIDES[side]}\nwall (CPU)", justify="right")
    for other in ("loop", "loop_nhwc"):
        table.add_column(f"assay / {other}\nwall (CPU)", justify="right")

    def ratio(r, other, what):
        return r["assay"][what] / r[other][what]

    for i, r in enumerate(rounds, 1):
        cells = [f"{r[s]['wall']:.1f} s ({r[s]['cpu']:.0f} s)" for s in SIDES]
        cells += [
            f"{ratio(r, o, 'wall'):.3f}x ({ratio(r, o, 'cpu'):.3f}x)" for o in ("loop", "loop_nhwc")
        ]
        table.add_row(str(i), *cells)
    cells = [f"{med(r[s]['wall'] for r in rounds):.1f} s" for s in SIDES]
    cells += [
        f"{med(ratio(r, o, 'wall') for r in rounds):.3f}x "
        f"({med(ratio(r, o, 'cpu') for r in rounds):.3f}x)"
        for o in ("loop", "loop_nhwc")
    ]
    table.add_row("median", *cells)
    console.print(table)

    parts = Table(title="per epoch and fixed cost (medians over rounds)")
    parts.add_column("")
    for side in SIDES:
        parts.add_column(SIDES[side], justify="right")
    for r in rounds:
        for side in SIDES:
            r[side]["epoch"] = med(r[side]["epochs"])
            r[side]["fixed"] = r[side]["wall"] - sum(r[side]["epochs"])
    for what, label in (("epoch", "median epoch (train + val)"), ("fixed", "wall - epochs")):
        parts.add_row(label, *(f"{med(r[s][what] for r in rounds):.2f} s" for s in SIDES))
    parts.add_row(
        "val acc (best epoch)",
        *(", ".join(f"{r[s]['acc']:.4f}" for r in rounds) for s in SIDES),
    )
    console.print(parts)

    fixed = Table(title="assay train's fixed cost, by phase (median over rounds)")
    fixed.add_column("phase")
    fixed.add_column("seconds", justify="right")
    seen = [p for p in PHASES if p in rounds[0]["assay"]["phases"]]
    seen += [p for p in rounds[0]["assay"]["phases"] if p not in seen]
    for name in seen:
        fixed.add_row(name, f"{med(r['assay']['phases'].get(name, 0.0) for r in rounds):.2f}")
    fixed.add_row("sum", f"{med(sum(r['assay']['phases'].values()) for r in rounds):.2f}")
    start = med(r["loop"]["phases"]["start-up (interpreter, imports)"] for r in rounds)
    fixed.add_row("(the loop's start-up: the interpreter and torch)", f"{start:.2f}")
    console.print(fixed)


if __name__ == "__main__":
    main()
