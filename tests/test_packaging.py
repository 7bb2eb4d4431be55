"""What `pip install` puts in site-packages: the engine as `assay`, its architectures as
`assay.models`, and nothing named `models` (it would collide with any other project's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _packages() -> tuple[dict[str, str], list[str]]:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return tool["package-dir"], tool["packages"]


def test_every_package_folder_is_listed_for_setuptools():
    """With package-dir, setuptools finds no subpackage by itself: one left out is missing from
    a wheel (an editable install hides it)."""
    dirs, listed = _packages()
    found = []
    for name, folder in dirs.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / folder)
            found.append(".".join([name, *rel.parts]))
    assert sorted(set(found)) == sorted(listed)


def test_the_wheel_holds_assay_models_and_no_top_level_models(tmp_path):
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("platform", "models"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(src), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("assay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"assay"}, tops
    for module in (
        "assay/models/__init__.py",
        "assay/models/cnn.py",
        "assay/data/__init__.py",
        "assay/preparation/__init__.py",
    ):
        assert module in names


def test_models_is_not_importable_but_assay_models_is(tmp_path):
    """Outside the repo (so its folder is not on sys.path), as any user's code runs."""
    probe = "import importlib.util as u; print(u.find_spec('models'), u.find_spec('assay.models'))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    none, spec = done.stdout.split(maxsplit=1)
    assert none == "None" and "models/__init__.py" in spec
