"""The machine's own ceiling for running two trainings at once: the same model's bare training loop
(no Lightning, no Ray, no tracking, one torch thread) in one process alone, then in two processes
side by side. Nothing built on top (two Ray Train workers, two sweep trials) can beat the second
number's ratio to the first, so the benches print it beside their own ratio.

    python bench/ceiling.py --dataset mnist --arch cnn --batch-size 128
    python bench/ceiling.py --dataset digits --arch cnn --batch-size 64 --seconds 20

`samples_per_second` is the one bare loop every bench uses (ddp_buckets.py: with DDP).
The data set must be prepared under --root (`assay fetch/prepare DATASET` there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _loop(rank, world, bucket_mb, root, dataset, arch, cfg, batch, seconds, port, go, queue):
    """One process's bare training loop; `bucket_mb` not None: DDP (gloo) across `world`."""
    import os
    import time

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from assay.data import datamodule
    from assay.models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dm = datamodule(dataset, Path(root), batch_size=batch)
    model = create_model(arch, task=dm.task, **cfg)
    x, y = dm.tensors("train")[:2]
    ddp = bucket_mb is not None and world > 1
    if ddp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(
            model, bucket_cap_mb=bucket_mb, gradient_as_bucket_view=True
        )
    opt = torch.optim.Adam(model.parameters())

    def step(i: int) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()

    for i in range(3):  # warm-up: allocator, kernels, DDP's first buckets
        step(i * batch)
    go.wait()  # all processes start timing together
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(((n * world + rank) * batch) % (len(x) - batch))
        n += 1
    queue.put(n * batch / (time.perf_counter() - start))
    if ddp:
        dist.destroy_process_group()


def samples_per_second(
    root: Path,
    dataset: str,
    arch: str,
    batch_size: int,
    processes: int,
    *,
    ddp_bucket_mb: float | None = None,
    model_cfg: dict | None = None,
    seconds: float = 15,
) -> float:
    """Training samples/s summed over `processes` running the bare loop at once: independent
    ones, or with `ddp_bucket_mb` one DDP group (gloo) with buckets of that size."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Barrier(processes)
    args = (str(root), dataset, arch, model_cfg or {}, batch_size, seconds, port, go, q)
    procs = [
        ctx.Process(target=_loop, args=(rank, processes, ddp_bucket_mb, *args))
        for rank in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def ceiling(
    root: Path,
    dataset: str,
    arch: str,
    batch_size: int,
    model_cfg: dict | None = None,
    seconds: float = 15,
) -> tuple[float, float]:
    """Training samples/s of one process alone, and summed over two side by side."""
    return tuple(
        samples_per_second(root, dataset, arch, batch_size, n, model_cfg=model_cfg, seconds=seconds)
        for n in (1, 2)
    )


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
