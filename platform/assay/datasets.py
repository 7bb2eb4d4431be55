"""The data sets Assay knows, in one registry: `fetch` and `prepare`, the config schema (a run's
`train.dataset`, `prepare.datasets`, which architecture trains on which) and the CLI's help all
read it. Light on purpose (no torch): the config schema imports it.

A data set is its name, its kind of data (which `assay.preparation` module fetches and prepares
it, and which architectures train on it: their `OBJECTIVES`), and a line about it; its pinned
source (package, version, member, sha256) is `fetch.<name>` in params.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from assay.errors import UserError

Kind = Literal["image", "text", "timeseries", "tabular", "ratings"]


@dataclass(frozen=True)
class DataSet:
    name: str
    kind: Kind
    about: str


class UnknownDataSetError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


_REGISTRY: dict[str, DataSet] = {}


def register_dataset(name: str, *, kind: Kind, about: str) -> DataSet:
    """Register a data set; a name registered twice is refused."""
    if name in _REGISTRY:
        raise ValueError(f"data set {name!r} is registered twice")
    _REGISTRY[name] = DataSet(name, kind, about)
    return _REGISTRY[name]


def get_dataset(name: str) -> DataSet:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDataSetError(
            f"unknown dataset {name!r}; known: {', '.join(list_datasets())}"
        ) from None


def list_datasets(kinds: set[str] | None = None) -> list[str]:
    """Every registered name in registration order (of the given kinds only, if any)."""
    return [n for n, d in _REGISTRY.items() if kinds is None or d.kind in kinds]


def help_line() -> str:
    """For `--help`: the names, grouped by kind."""
    by_kind: dict[str, list[str]] = {}
    for d in _REGISTRY.values():
        by_kind.setdefault(d.kind, []).append(d.name)
    return "; ".join(f"{', '.join(names)} ({kind})" for kind, names in by_kind.items())


register_dataset("digits", kind="image", about="scikit-learn's 8x8 handwritten digits, 1,797")
register_dataset("mnist", kind="image", about="MNIST handwritten digits, 28x28, 70,000")
register_dataset("fashion_mnist", kind="image", about="Fashion-MNIST, 28x28 (the Debian package)")
register_dataset("rotten_tomatoes", kind="text", about="movie-review sentences, positive/negative")
register_dataset("elecdemand", kind="timeseries", about="Victoria's half-hourly electricity demand")
register_dataset("shuttle", kind="tabular", about="Statlog shuttle: anomalies among normal rows")
register_dataset("movielens", kind="ratings", about="MovieLens 100k ratings, 1 to 5")
