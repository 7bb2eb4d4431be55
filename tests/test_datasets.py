"""One registry of data sets (assay.datasets) is what the config schema, fetch/prepare and the
CLI's help read: a name it lacks is refused everywhere with the same list, and what it holds
shows in `--help`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from assay import data, datasets
from assay.cli import app
from assay.config import ConfigError, load_config, validate


def test_every_registered_data_set_has_a_known_kind_of_data():
    for name in datasets.list_datasets():
        assert data.datamodule.__module__  # the module that maps kinds is importable
        assert datasets.get_dataset(name).kind in (
            "image",
            "text",
            "timeseries",
            "tabular",
            "ratings",
        )
    with pytest.raises(ValueError, match="registered twice"):
        datasets.register_dataset("digits", kind="image", about="again")


def test_an_unknown_data_set_is_refused_with_the_registry_s_names(project):
    raw = load_config(root=project).model_dump()
    raw["train"]["dataset"] = "imagenet"
    with pytest.raises(ConfigError) as e:
        validate(raw)
    assert "unknown dataset 'imagenet'; known: " + ", ".join(datasets.list_datasets()) in str(
        e.value
    )
    # the registry's own error (it was a ValueError of preparation's, a second copy of the check)
    known = "known: " + ", ".join(datasets.list_datasets())
    with pytest.raises(datasets.UnknownDataSetError, match=known):
        data.prepare("imagenet", load_config(root=project).prepare, project)


def test_the_help_lists_the_registered_data_sets():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name in datasets.list_datasets():
        assert name in result.output
