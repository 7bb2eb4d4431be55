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
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ceiling import samples_per_second  # noqa: E402


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
            one, two = (
                samples_per_second(
                    args.root,
                    args.dataset,
                    args.arch,
                    args.batch_size,
                    n,
                    ddp_bucket_mb=b,
                    seconds=args.seconds,
                )
                for n in (1, 2)
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
