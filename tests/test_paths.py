"""Writing outputs whole or not at all: a failure leaves neither half a file nor empty folders."""

from __future__ import annotations

import pytest

from assay.paths import atomic_dir, atomic_write_bytes


def test_a_failed_atomic_dir_removes_the_folders_it_made_and_only_those(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "outputs/key/model") as tmp:
        (tmp / "half.ckpt").write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "outputs/key").mkdir(parents=True)
    (tmp_path / "outputs/other").mkdir()
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "outputs/key/eval/plots"):
        (tmp_path / "outputs/key/eval/written-meanwhile.txt").write_text("kept")
        raise RuntimeError("crash")
    # the folders that were there stay, and so does the one someone else wrote into
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["key", "other"]
    assert [p.name for p in (tmp_path / "outputs/key/eval").iterdir()] == ["written-meanwhile.txt"]


def test_a_failed_atomic_write_removes_the_folders_it_made(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "outputs/key/metrics.json", "not bytes")
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "outputs/key/metrics.json", b"{}")
    assert (tmp_path / "outputs/key/metrics.json").read_bytes() == b"{}"
