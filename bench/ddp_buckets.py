"""DDP's gradient bucket size on CPUs (gloo): one training process alone against two DDP
processes on 2 cores, for several bucket sizes, with the bare training loop (torch.distributed,
no Lightning, no Ray) so nothing else moves. Settings are interleaved and repeated, and the table
gives each bucket size's median speed-up: this machine is noisy.

    python bench/ddp_buckets.py --root PROJECT                  # MNIST CNN, batch 128 per process
    python bench/ddp_buckets.py --root PROJECT --buckets 25,1,0.25,0.1 --repeat 5

Why: DDP all-reduces a bucket as soon as all its gradients exist, while the backward pass goes
on. With PyTorch's default 25 MB, a small model's gradients (the MNIST CNN's: 1.7 MB) fill one
bucket, sent only after the whole backward pass. Measured here (MNIST CNN, batch 128), the bare
loop gains from small buckets: 1.81x with 25 MB and 1.94x with 0.25 MB (this bench, 3 rounds;
an earlier run of the same loop, 6 rounds: 1.68x and 1.83x). A Ray Train run does not: with
the bucket size passed to its DDP strategy (tried, then taken out), `bench/ray_scaling.py` gave
1.57x for 0.25 MB and for 25 MB. So Assay keeps PyTorch's default, and this bench is the
reference for what DDP itself costs on a machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _work(rank, world, root, dataset, arch, cfg, batch, bucket, seconds, port, queue) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from assay.data import datamodule
    from models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dm = datamodule(dataset, Path(root), batch_size=batch)
    model = create_model(arch, task=dm.task, **cfg)
    x, y = dm.tensors("train")[:2]
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(
            model, bucket_cap_mb=bucket, gradient_as_bucket_view=True
        )
    opt = torch.optim.Adam(model.parameters())

    def step(i: int) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()

    for i in range(3):  # warm-up
        step(i * batch)
    if world > 1:
        dist.barrier()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(((n * world + rank) * batch) % (len(x) - batch))
        n += 1
    queue.put(n * batch / (time.perf_counter() - start))
    if world > 1:
        dist.destroy_process_group()


def samples_per_second(
    root, dataset, arch, batch, world, bucket, seconds, model_cfg: dict | None = None
) -> float:
    """Training samples/s summed over `world` processes (1: no DDP)."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    args = (world, str(root), dataset, arch, model_cfg or {}, batch, bucket, seconds, port, q)
    procs = [ctx.Process(target=_work, args=(rank, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="project with the data prepared")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--buckets", default="25,0.25", help="bucket sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    buckets = [float(b) for b in args.buckets.split(",")]
    ratios: dict[float, list[float]] = {b: [] for b in buckets}
    singles = []
    console = Console(width=110)
    for r in range(args.repeat):
        for b in buckets:  # each DDP run right after its own single-process reference
            one = samples_per_second(
                args.root, args.dataset, args.arch, args.batch_size, 1, b, args.seconds
            )
            two = samples_per_second(
                args.root, args.dataset, args.arch, args.batch_size, 2, b, args.seconds
            )
            singles.append(one)
            ratios[b].append(two / one)
            console.print(f"round {r + 1}, bucket {b:g} MB: 1 process {one:.0f}, DDP x2 {two:.0f}")
    table = Table(
        "bucket MB",
        "2 DDP processes / 1 (median)",
        "each run",
        title=f"{args.dataset} {args.arch}, batch {args.batch_size} per process, gloo, "
        f"1 thread each; 1 process: {statistics.median(singles):.0f} samples/s (median)",
    )
    for b in buckets:
        table.add_row(
            f"{b:g}",
            f"{statistics.median(ratios[b]):.2f}",
            ", ".join(f"{v:.2f}" for v in ratios[b]),
        )
    console.print(table)


if __name__ == "__main__":
    main()
