"""The machine's own ceiling for running two trainings at once: the same model's bare training loop
(no Lightning, no Ray, no tracking, one torch thread) in one process alone, then in two processes
side by side. Nothing built on top (two Ray Train workers, two sweep trials) can beat the second
number's ratio to the first, so the benches print it beside their own ratio.

    python bench/ceiling.py --dataset mnist --arch cnn --batch-size 128
    python bench/ceiling.py --dataset digits --arch cnn --batch-size 64 --seconds 20

The data set must be prepared under --root (`assay fetch/prepare DATASET` there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _samples_per_second(
    root: str, dataset: str, arch: str, batch: int, model_cfg: dict, seconds: float, go, queue
) -> None:
    import time

    import torch
    import torch.nn.functional as F

    from assay.data import datamodule
    from models import create_model

    torch.set_num_threads(1)
    dm = datamodule(dataset, Path(root), batch_size=batch)
    model = create_model(arch, task=dm.task, **model_cfg)
    x, y = dm.tensors("train")[:2]
    opt = torch.optim.Adam(model.parameters())
    for i in range(3):  # warm-up: allocator, kernels
        F.cross_entropy(model(x[i * batch : (i + 1) * batch]), y[i * batch : (i + 1) * batch])
    go.wait()  # both processes start timing together
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        i = (n * batch) % (len(x) - batch)
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()
        n += 1
    queue.put(n * batch / (time.perf_counter() - start))


def ceiling(
    root: Path,
    dataset: str,
    arch: str,
    batch_size: int,
    model_cfg: dict | None = None,
    seconds: float = 15,
) -> tuple[float, float]:
    """Training samples/s of one process alone, and summed over two side by side."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = []
    for n in (1, 2):
        q, go = ctx.Queue(), ctx.Barrier(n)
        args = (str(root), dataset, arch, batch_size, model_cfg or {}, seconds, go, q)
        procs = [ctx.Process(target=_samples_per_second, args=args) for _ in range(n)]
        for p in procs:
            p.start()
        rates = [q.get() for _ in procs]
        for p in procs:
            p.join()
        out.append(sum(rates))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="project with the data set")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for _ in range(args.repeat):
        one, two = ceiling(args.root, args.dataset, args.arch, args.batch_size, None, args.seconds)
        print(
            f"{args.dataset} {args.arch} batch {args.batch_size}: one process {one:.0f} samples/s, "
            f"two side by side {two:.0f} samples/s: {two / one:.2f}x"
        )


if __name__ == "__main__":
    main()
