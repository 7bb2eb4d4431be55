"""Configuration: merging order, overrides, and bad input failing early with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from assay.cli import app
from assay.config import AssayConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    return tmp_path


def test_params_yaml_is_valid_and_is_the_default(root):
    cfg = load_config(root=root)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert cfg.train.lr == raw["train"]["lr"]
    assert set(cfg.runs) == set(raw["runs"])
    assert cfg.train.models.cnn.channels == raw["train"]["models"]["cnn"]["channels"]


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_experiment_file_validates(root, path):
    assert isinstance(load_config(path.stem, root=root), AssayConfig)


def test_precedence_params_then_experiment_then_run_then_set(root):
    cfg = load_config("digits-mlp", ["train.lr=0.5", "train.models.mlp.dropout=0.0"], root=root)
    assert cfg.train.optimizer == "sgd"  # from the experiment
    assert cfg.train.lr == 0.5  # --set beats the experiment's 0.05
    assert cfg.train.models.mlp.dropout == 0.0
    run = load_config(root=root).for_run("digits-cnn")
    assert (run.train.dataset, run.train.arch, run.train.max_epochs) == ("digits", "cnn", 40)
    assert run.train.lr == load_config(root=root).train.lr  # shared value kept


def test_digest_is_stable_and_sensitive(root):
    a, b = load_config(root=root), load_config(root=root)
    assert a.digest() == b.digest()
    assert load_config(overrides=["train.lr=0.1"], root=root).digest() != a.digest()


# Each bad input: (--set overrides, fragments the message must contain: key path, value, allowed).
BAD = {
    "unknown top-level key": (["trian.lr=0.1"], ["trian", "unknown key", "train"]),
    "unknown train key": (["train.lrr=0.1"], ["train.lrr", "unknown key", "lr"]),
    "unknown nested key": (["tracking.wandb.moed=x"], ["tracking.wandb.moed", "mode"]),
    "lr wrong type": (["train.lr=fast"], ["train.lr", "'fast'", "number"]),
    "lr negative": (["train.lr=-0.1"], ["train.lr", "-0.1", "greater than 0"]),
    "lr zero": (["train.lr=0"], ["train.lr", "greater than 0"]),
    "epochs zero": (
        ["train.max_epochs=0"],
        ["train.max_epochs", "0", "greater than or equal to 1"],
    ),
    "epochs float": (["train.max_epochs=2.5"], ["train.max_epochs", "2.5", "integer"]),
    "batch size list": (["train.batch_size=[1,2]"], ["train.batch_size", "[1, 2]", "integer"]),
    "momentum one": (["train.momentum=1.0"], ["train.momentum", "1.0", "less than 1"]),
    "unknown optimizer": (
        ["train.optimizer=adamx"],
        ["train.optimizer", "adamx", "'sgd'", "'rmsprop'"],
    ),
    "unknown scheduler": (["train.scheduler=linear"], ["train.scheduler", "linear", "cosine"]),
    "unknown architecture": (["train.arch=resnet"], ["train.arch", "resnet", "cnn", "mlp"]),
    "unknown dataset": (["train.dataset=cifar"], ["train.dataset", "cifar", "digits", "mnist"]),
    "unknown activation": (
        ["train.models.cnn.activation=swish"],
        ["train.models.cnn.activation", "swish", "gelu"],
    ),
    "unknown model section": (
        ["train.models.vgg.depth=3"],
        ["train.models.vgg", "unknown architecture", "cnn"],
    ),
    "unknown model key": (
        ["train.models.mlp.width=3"],
        ["train.models.mlp.width", "unknown key", "hidden_sizes"],
    ),
    "dropout too high": (
        ["train.models.mlp.dropout=1.5"],
        ["train.models.mlp.dropout", "1.5", "less than 1"],
    ),
    "even kernel": (
        ["train.models.cnn.kernel_size=4"],
        ["train.models.cnn.kernel_size", "4", "odd"],
    ),
    "bad run entry": (
        ["runs.digits-cnn.arch=transformerx"],
        ["runs.digits-cnn.arch", "transformerx"],
    ),
    "bad precision": (["train.precision=fp8"], ["train.precision", "fp8", "bf16-mixed"]),
    "bad wandb mode": (["tracking.wandb.mode=cloud"], ["tracking.wandb.mode", "cloud", "offline"]),
    "bad prepare dataset": (
        ["prepare.datasets=[digits, svhn]"],
        ["prepare.datasets", "svhn", "known: digits, mnist"],
    ),
    "val fraction": (
        ["prepare.val_fraction=0.9"],
        ["prepare.val_fraction", "0.9", "less than 0.5"],
    ),
    "gpus without workers": (
        ["train.gpus_per_worker=1"],
        ["train: gpus_per_worker is 1.0 but workers is 0", "train.workers >= 1"],
    ),
    "gpus on cpu": (
        ["train.gpus_per_worker=1", "train.workers=2"],
        ["accelerator is 'cpu'", "train.accelerator=gpu"],
    ),
    "extra wheel files unpinned": (
        ["fetch.shuttle.also=[river/datasets/other.csv]"],
        ["fetch.shuttle", "pinned by the wheel's sha256"],
    ),
    "negative workers": (["train.workers=-1"], ["train.workers", "-1", "greater than or equal"]),
    "bad monitor": (["train.monitor=acc"], ["train.monitor", "'acc'", "val/<metric>:max|min"]),
    "ui not an address": (
        ["tracking.ui=localhost:5000"],
        ["tracking.ui", "localhost:5000", "https?://"],
    ),
    "few-shot zero": (["train.labels_per_class=0"], ["train.labels_per_class", "0", "greater"]),
    "set without value": (["train.lr"], ["train.lr", "KEY.PATH=VALUE"]),
    "set into a value": (["train.lr.max=1"], ["train.lr", "not a section"]),
}


@pytest.mark.parametrize("overrides,fragments", BAD.values(), ids=BAD.keys())
def test_bad_config_names_path_value_and_allowed(root, overrides, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides, root=root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_every_problem_reported_at_once(root):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["train.lr=-1", "train.optimizer=nope", "train.foo=1"], root=root)
    assert len(info.value.problems) == 3


def test_bad_experiment_and_params_files(root):
    with pytest.raises(ConfigError, match="not found; known: .*mnist-cnn"):
        load_config("no-such-experiment", root=root)
    (root / "experiments" / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("broken", root=root)
    (root / "experiments" / "scalar.yaml").write_text("just a string\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config("scalar", root=root)


def test_unknown_run_lists_the_defined_ones(root):
    with pytest.raises(ConfigError, match="runs.nope: no such run.*digits-mlp"):
        load_config(root=root).for_run("nope")


@pytest.mark.parametrize("command", ["train", "evaluate", "register"])
def test_cli_rejects_bad_config_before_any_work(root, monkeypatch, command):
    """Exit code 2, the message on stderr, and nothing written: no data, outputs or stores."""
    monkeypatch.chdir(root)
    before = sorted(p.name for p in root.iterdir())
    result = CliRunner().invoke(app, [command, "--set", "train.lr=-3"])
    assert result.exit_code == 2
    assert "train.lr: got -3" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == before


def test_cli_config_prints_the_merged_config(root, monkeypatch):
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["config", "--run", "mnist-cnn", "--set", "train.lr=0.02"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 0.02 and shown["train"]["arch"] == "cnn"


# ----------------------------------------------------------- a run's key; what a command needs
def test_a_run_and_an_experiment_are_keyed_by_their_own_name(root):
    """Outputs and the registered model belong to the run's key, not to <dataset>-<arch>: two runs
    of one data set and architecture no longer share outputs/<dataset>-<arch>/."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runs"]["digits-cnn-wide"] = {"dataset": "digits", "arch": "cnn"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(root=root)
    assert cfg.for_run("digits-cnn-wide").train.key == "digits-cnn-wide"
    assert cfg.for_run("digits-cnn").train.key == "digits-cnn"
    assert cfg.train.key == f"{cfg.train.dataset}-{cfg.train.arch}"  # no run, no experiment
    assert load_config("digits-cnn-tiny", root=root).train.key == "digits-cnn-tiny"


def test_changing_the_data_or_architecture_on_the_command_line_drops_the_runs_key(
    root, monkeypatch
):
    monkeypatch.chdir(root)
    shown = CliRunner().invoke(app, ["config", "--run", "digits-cnn", "--arch", "mlp"])
    assert yaml.safe_load(shown.stdout)["train"]["name"] is None  # key: digits-mlp
    shown = CliRunner().invoke(app, ["config", "--run", "digits-cnn", "--set", "train.lr=0.1"])
    assert yaml.safe_load(shown.stdout)["train"]["name"] == "digits-cnn"


def test_a_run_name_that_cannot_be_a_folder_is_refused(root):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runs"]["../escape"] = {"dataset": "digits", "arch": "cnn"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=r"runs\.\.\./escape: a run's name is its outputs"):
        load_config(root=root)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "params.yaml is empty"),
        ("# nothing but comments\n", "params.yaml is empty"),
        ("prepare: {seed: 0}\n", "params.yaml has no `train` section"),
        ("train: {}\nprepare: {seed: 0}\n", "params.yaml has an empty `train` section"),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate", "register"])
def test_an_emptied_params_yaml_is_an_error_not_the_defaults(
    root, monkeypatch, content, fragment, command
):
    """It trained silently from built-in defaults; now the command names the file and stops
    before writing anything."""
    (root / "params.yaml").write_text(content)
    monkeypatch.chdir(root)
    before = sorted(p.name for p in root.iterdir())
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert fragment in message and str(root / "params.yaml") in message
    assert "git checkout params.yaml" in message
    assert sorted(p.name for p in root.iterdir()) == before


def test_an_experiment_file_may_supply_the_section_params_yaml_lacks(root):
    (root / "params.yaml").write_text("prepare: {seed: 0}\n")
    cfg = load_config("digits-mlp", root=root, require=("train",))
    assert cfg.train.arch == "mlp"


BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
train:
  models:
    mlp: {hidden_sizes: *i}
"""


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(root):
    """A few hundred bytes of nested aliases (9^9 values) made `assay config` use gigabytes for
    minutes. Run in a child with a 2 GB address-space cap, so the old behaviour fails here
    instead of swapping the machine."""
    import resource
    import subprocess
    import sys
    import time

    (root / "params.yaml").write_text(
        (root / "params.yaml").read_text()
        + "\n"
        + BOMB.replace("train:\n  models:\n    mlp: {hidden_sizes: *i}\n", "")
    )
    (root / "experiments" / "bomb.yaml").write_text(BOMB)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    for args in (["config"], ["config", "-e", "bomb"]):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "assay.cli", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=cap,
        )
        seconds = time.perf_counter() - started
        assert done.returncode == 2, done.stderr[-2000:]
        assert "aliases (*name) expand to over 100,000 values" in done.stderr
        assert len(done.stderr) < 2000 and seconds < 60


def test_error_messages_cut_long_values(root):
    huge = "x" * 500_000
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"train.optimizer={huge}", f"train.monitor={huge}"], root=root)
    assert len(str(e.value)) < 2000 and "(500,002 characters)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"train.lr.x={huge}"], root=root)
    assert len(str(e.value)) < 2000


def test_an_experiment_file_can_name_a_params_run_instead_of_repeating_it(tmp_path):
    """experiments/movielens-matrix_factorization.yaml says `run: ...`: `assay train -e` and
    `dvc repro`'s run are one config (they once drifted apart as two copies); a run params.yaml
    lacks is named with the runs it has."""
    cfg = load_config("movielens-matrix_factorization", root=REPO)
    run = load_config(root=REPO).for_run("movielens-matrix_factorization")
    assert cfg.model_dump() == run.model_dump() and cfg.train.key == run.train.key
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: no-such-run\n")
    with pytest.raises(ConfigError, match="run: 'no-such-run' is not a run of params.yaml"):
        load_config(bad, root=REPO)


def test_typed_overrides_are_applied_as_given_never_parsed_as_yaml():
    """A command-line flag (`--dataset`, `--workers`, ...) is a typed override: its value is used as
    it is. As `--set` text the same value is YAML (`on` is true), as a user typing it expects."""
    from assay.cli.common import as_flags, ray_sets
    from assay.config import with_overrides

    cfg = load_config(root=REPO)
    typed = with_overrides(cfg, [("tracking.wandb.project", "on"), ("train.lr", 0.5)])
    assert typed.tracking.wandb.project == "on" and typed.train.lr == 0.5
    with pytest.raises(ConfigError, match="tracking.wandb.project"):
        with_overrides(cfg, ["tracking.wandb.project=on"])  # YAML: true, not a name
    flags = ray_sets(2, None, 0.5, None)
    assert flags == [("train.workers", 2), ("train.cpus_per_worker", 0.5)]
    # a job's command line gives the same: --set text as it was, typed flags as their own flags
    argv = as_flags(["train.lr=0.01", *flags])
    assert argv == ["--set", "train.lr=0.01", "--workers", "2", "--cpus-per-worker", "0.5"]


def test_the_mlflow_ui_is_the_tracking_server_when_there_is_one(root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(overrides=["tracking.ui=http://127.0.0.1:5001/"], root=root).tracking
    assert cfg.ui_url(root) == "http://127.0.0.1:5001"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    assert cfg.ui_url(root) == "http://10.0.0.5:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://me:secret@mlflow.example:8443/")
    assert cfg.ui_url(root) == "https://mlflow.example:8443"  # no credentials in a link
