"""Transfer from the registry (`train.init_from`, `train.freeze`, `train.unfreeze_epoch`): the
encoder of a registered digits CNN starts a new run, frozen or not, the run names its parent,
and a model that does not fit is refused, naming the layer, before any run starts."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from assay import engine
from assay.config import ConfigError
from assay.evaluation import evaluate
from assay.registry import register
from assay.training import train
from assay.transfer import TransferError, head_name
from tests.conftest import tiny_config

SOURCE = "models:/digits-cnn_tiny@champion"


def _client(project) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def source(project):
    cfg = tiny_config(project, wandb="disabled", max_epochs=3, lr=0.01)
    run_id = train(cfg, project).run_id
    evaluate(cfg, project)
    register(cfg, project)
    return run_id


def _weights(project, key: str) -> dict[str, torch.Tensor]:
    state = torch.load(project / "outputs" / key / "model/best.ckpt", weights_only=False)
    return {k.removeprefix("net."): v for k, v in state["state_dict"].items()}


def test_init_from_starts_from_the_encoder_and_names_its_parent(project, source):
    src = _weights(project, "digits-cnn_tiny")
    cfg = tiny_config(project, wandb="disabled", init_from=SOURCE, max_epochs=1, seed=7)
    assert cfg.train.key == "digits-cnn_tiny-ft"  # never the source's outputs or model
    _, model = engine.build(cfg, project)
    state = model.net.state_dict()
    prefix = head_name(model.net) + "."  # the classifier: the last linear layer
    head = [k for k in state if k.startswith(prefix)]
    assert len(head) == 2  # its weight and bias
    for k, v in state.items():
        if k in head:
            assert not torch.equal(v, src[k]), k  # a fresh head
        else:
            assert torch.equal(v, src[k]), k  # the source's encoder
    run_id = train(cfg, project).run_id
    tags = _client(project).get_run(run_id).data.tags
    assert tags["assay.init_from"] == SOURCE
    assert tags["assay.init_from.run_id"] == source
    assert int(tags["assay.init_from.layers"]) == len(state) - len(head)


def test_a_frozen_encoder_stays_and_unfreezing_trains_it(project, source):
    src = _weights(project, "digits-cnn_tiny")
    probe = tiny_config(project, wandb="disabled", init_from=SOURCE, freeze="encoder", max_epochs=2)
    assert probe.train.key == "digits-cnn_tiny-probe"
    train(probe, project)
    after = _weights(project, "digits-cnn_tiny-probe")
    moved = {k for k in after if k in src and not torch.equal(after[k], src[k])}
    head = [k for k in after if k.endswith(("weight", "bias"))][-2:]  # the last linear layer
    assert moved and moved <= set(head), moved  # the head alone learned
    thawed = tiny_config(
        project,
        wandb="disabled",
        init_from=SOURCE,
        freeze="encoder",
        unfreeze_epoch=1,
        max_epochs=2,
        early_stopping_patience=0,
        monitor="val/loss:min",
    )
    train(thawed, project)
    after = _weights(project, "digits-cnn_tiny-ft")
    moved = {k for k in after if k in src and not torch.equal(after[k], src[k])}
    assert moved - set(head), moved  # the encoder trained too, from epoch 1


def test_a_model_that_does_not_fit_is_refused_before_any_run(project, source):
    runs_before = len(_client(project).search_runs(["0", "1"]))
    wider = tiny_config(project, wandb="disabled", arch="cnn", init_from=SOURCE)
    with pytest.raises(TransferError, match=r"layer '1\.weight' is \(4, 1, 3, 3\) there"):
        train(wider, project)
    other = tiny_config(project, wandb="disabled", arch="mlp_tiny", init_from=SOURCE)
    with pytest.raises(TransferError, match="is a cnn model; this run trains a mlp"):
        train(other, project)
    missing = tiny_config(project, wandb="disabled", init_from="models:/nope@champion")
    with pytest.raises(TransferError, match="cannot load models:/nope@champion"):
        train(missing, project)
    assert len(_client(project).search_runs(["0", "1"])) == runs_before  # no run opened
    with pytest.raises(ConfigError, match="freeze is 'encoder' but init_from is null"):
        tiny_config(project, freeze="encoder")
    with pytest.raises(ConfigError, match="unfreeze_epoch is 2 but freeze is 'none'"):
        tiny_config(project, init_from=SOURCE, unfreeze_epoch=2)


def test_a_text_model_of_another_vocabulary_is_refused(fproject, family_data):
    """Token ids mean words only under their tokenizer: an LSTM whose data was tokenized on
    another training split (prepare.seed=1) may not start from this one's embeddings."""
    import shutil

    from assay.config import apply_overrides, load_config, validate
    from assay.data import prepare
    from tests.conftest import REPO, family_cfg

    cfg = family_cfg(fproject, "rotten_tomatoes", "lstm_tiny")
    train(cfg, fproject)
    evaluate(cfg, fproject)
    register(cfg, fproject)
    raw = fproject.parent / "rt-raw"
    other = validate(
        apply_overrides(
            load_config(params=REPO / "params.yaml", root=fproject).model_dump(),
            ["prepare.seed=1"],
        )
    )
    shutil.copytree(family_data / "raw/rotten_tomatoes", raw / "data/raw/rotten_tomatoes")
    prepare("rotten_tomatoes", other.prepare, raw)
    shutil.rmtree(fproject / "data/rotten_tomatoes")
    shutil.copytree(raw / "data/rotten_tomatoes", fproject / "data/rotten_tomatoes")
    source = "models:/rotten_tomatoes-lstm_tiny@champion"
    again = family_cfg(fproject, "rotten_tomatoes", "lstm_tiny", init_from=source)
    runs_before = len(_client(fproject).search_runs(["0", "1"]))
    with pytest.raises(TransferError, match="reads text with another vocabulary"):
        train(again, fproject)
    assert len(_client(fproject).search_runs(["0", "1"])) == runs_before
