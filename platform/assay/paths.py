"""Where things live, and writing them so that a failure never leaves half an output behind."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assay.errors import UserError


def find_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder up from `start` (the cwd) holding params.yaml or
    dvc.yaml; the cwd itself when there is none. `dvc repro` runs stages from that folder."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "params.yaml").exists() or (d / "dvc.yaml").exists():
            return d
    return start


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DataError(UserError, ValueError):
    """A prepared or fetched file that is missing, cut short or not what its stage writes. The
    message names the file, what is wrong and the command that rebuilds it. (Here, below both
    `assay.preparation`, which raises it without torch, and `assay.data`.)"""


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and whatever of its parents is missing; return the folders this call
    created, deepest first, so that a failure can take them away again (`remove_if_empty`)."""
    made = []
    d = folder
    while not d.exists() and d != d.parent:
        made.append(d)
        d = d.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_if_empty(made: list[Path]) -> None:
    """Remove the folders `make_parents` created, deepest first, while they are empty: what
    something else wrote into one meanwhile stays, and so does every folder above it."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `target`; it replaces `target` only if the block succeeds.
    A failure leaves no trace: neither the scratch folder nor the (empty) parents made for it.
    Its name, `.<target>.<pid>-<random>`, lets `assay runs gc` tell a killed process's leftovers
    from a live one's (see `assay.orphans`)."""
    made = make_parents(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_if_empty(made)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _scratch_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    made = make_parents(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_scratch_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_if_empty(made)
        raise


def csv_bytes(rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> bytes:
    """Rows as CSV; columns `fieldnames` (default: every key, in first-seen order)."""

    keys = fieldnames or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, hint: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: {hint}") from None


def output_dir(key: str, root: Path) -> Path:
    """A run's outputs: outputs/<key>/ (model/, history.csv, metrics.json, eval/, ...)."""
    return root / "outputs" / key
