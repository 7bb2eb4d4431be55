"""Where a run's seconds go: named phases of `assay train` (set-up, tracking, the fit, each
epoch, model logging, plots), written to run.json as `timings` and read by bench/overhead.py.

Wall-clock, not CPU: what a user waits for. Lightning's profilers time what happens inside a fit;
these are the phases around it, which no profiler sees, plus each epoch as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """Seconds per named phase (a phase entered twice adds up), and each epoch's seconds when
    the fit ran in this process (a Ray Train fit's epochs are on its workers: none here).
    run.json stores them with sorted keys: bench/overhead.py puts them back in order."""

    def __init__(self) -> None:
        self.started_at = time.time()  # Unix time: a caller outside the process lines it up
        self.seconds: dict[str, float] = {}
        self.epochs: list[float] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, since: float) -> None:
        """Count the seconds from `since` (a `time.perf_counter()`) to now as phase `name`: for a
        phase that a `with` statement's own entry makes (a tracked run opening)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - since

    def as_dict(self) -> dict:
        return {
            "started_at": round(self.started_at, 3),
            "ended_at": round(time.time(), 3),
            "phases": {k: round(v, 3) for k, v in self.seconds.items()},
            "epochs": [round(s, 3) for s in self.epochs],
        }
