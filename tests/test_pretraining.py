"""Self-supervised pretraining (`train.objective`): SimCLR on images and masked tokens on text
learn without reading a label, are scored by their own metrics, and hand their encoder to a
classifier (`train.init_from`); an objective an architecture does not declare is refused before
any run starts. (Train -> evaluate -> register -> predict for both: tests/test_objectives.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from assay import engine
from assay.config import ConfigError, load_config, with_overrides
from assay.evaluation import evaluate
from assay.models import create_model
from assay.objectives.contrastive import augment, knn_predict, nt_xent
from assay.objectives.masked_tokens import MASK_ID, mask_tokens
from assay.registry import register
from assay.training import train
from tests.conftest import family_cfg, tiny_config

IMAGES = {"kind": "image", "in_shape": [1, 8, 8], "num_classes": 10}


def _runs(project) -> list:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_contrastive_learns_features_that_separate_digits_and_starts_a_few_shot_classifier(
    project,
):
    cfg = tiny_config(
        project,
        arch="cnn",
        wandb="disabled",
        objective="contrastive",
        max_epochs=20,
        batch_size=128,
    )
    assert cfg.train.key == "digits-cnn-contrastive"
    run_id = train(cfg, project).run_id
    scores = evaluate(cfg, project).metrics
    # a logistic regression on 10 labels per class does better on the features learned without
    # labels than on the pixels (measured after 20 epochs: 0.936 vs 0.894; the untrained CNN's
    # features: 0.836)
    assert scores["test/probe_acc"] > scores["test/pixels_probe_acc"], scores
    assert 0 <= scores["test/pos_acc"] <= 1 and 0 <= scores["test/knn_acc"] <= 1
    for png in ("views.png", "latent.png"):
        assert (project / "outputs" / cfg.train.key / "eval" / png).stat().st_size > 1000

    few = tiny_config(
        project,
        arch="cnn",
        wandb="disabled",
        init_from=f"runs:/{run_id}/model",
        freeze="encoder",
        labels_per_class=5,
    )
    assert few.train.key == "digits-cnn-probe-k5"
    _, model = engine.build(few, project)
    assert model.objective.name == "classification" and model.net[-1].out_features == 10
    assert train(few, project).run_id


def test_contrastive_never_reads_a_label():
    model = create_model("cnn_tiny", task=IMAGES, objective="contrastive")
    x = torch.rand(32, 1, 8, 8)
    losses = []
    for labels in (torch.zeros(32, dtype=torch.long), torch.randint(0, 10, (32,))):
        torch.manual_seed(0)
        losses.append(model.objective.step(model, (x, labels), "train").item())
    assert losses[0] == losses[1]


def test_nt_xent_rewards_twins_and_knn_votes():
    z = torch.randn(16, 8)
    twins = torch.cat([z, z + 0.01 * torch.randn_like(z)])
    strangers = torch.cat([z, torch.randn_like(z)])
    (good, hits), (bad, _) = nt_xent(twins), nt_xent(strangers)
    assert good < bad and hits == 1.0
    bank = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    pred = knn_predict(
        torch.tensor([[1.0, 0.05], [0.05, 1.0]]), bank, torch.tensor([0, 0, 1, 1]), 2
    )
    assert pred.tolist() == [0, 1]
    views = augment(torch.rand(4, 1, 28, 28))
    assert views.shape == (4, 1, 28, 28) and 0 <= views.min() and views.max() <= 1


def test_masking_chooses_real_tokens_only_in_berts_proportions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 500, (400, 64), generator=g)
    ids[:, 40:] = 0  # padding
    inputs, targets = mask_tokens(ids, 500, 0, torch.Generator().manual_seed(1))
    chosen = targets != -100
    assert not chosen[:, 40:].any() and (inputs[:, 40:] == 0).all()  # padding never chosen
    assert abs(chosen[:, :40].float().mean().item() - 0.15) < 0.01
    assert torch.equal(targets[chosen], ids[chosen])
    masked = (inputs == MASK_ID) & chosen
    kept = (inputs == ids) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.03  # ~1% of randoms hit it
    assert torch.equal(inputs[~chosen], ids[~chosen])


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"arch": "cnn_tiny", "objective": "masked_tokens"}, "classification or contrastive"),
        ({"arch": "autoencoder_tiny", "objective": "contrastive"}, "trains for reconstruction"),
        ({"arch": "cnn_tiny", "objective": "nope"}, "not 'nope'"),
        (
            {
                "arch": "cnn_tiny",
                "objective": "contrastive",
                "init_from": "models:/digits-cnn_tiny@champion",
                "freeze": "encoder",
            },
            "pretrains the encoder itself",
        ),
    ],
)
def test_an_objective_the_architecture_does_not_declare_is_refused(project, settings, says):
    with pytest.raises(ConfigError, match=says):
        tiny_config(project, wandb="disabled", **settings)


def test_a_self_supervised_run_on_few_labels_is_refused_before_a_run_opens(project):
    cfg = tiny_config(project, wandb="disabled", objective="contrastive", labels_per_class=5)
    with pytest.raises(ConfigError, match="only a classifier learns from K labels per class"):
        train(cfg, project)
    assert not _runs(project)


def test_the_objective_is_a_runs_own_and_changing_it_changes_the_key(project):
    cfg = load_config(root=project)
    other = with_overrides(cfg, ["train.objective=contrastive"]).for_run("shuttle-autoencoder")
    assert other.train.objective == "auto"  # train's objective is not every named run's
    named = with_overrides(cfg.for_run("digits-cnn"), ["train.objective=contrastive"])
    assert named.train.key == "digits-cnn-contrastive"  # never the classifier's outputs or model


def test_the_gate_never_puts_a_self_supervised_model_in_a_classifiers_place(project):
    classifier = tiny_config(project, wandb="disabled", name="digits-net")
    train(classifier, project)
    evaluate(classifier, project)
    assert register(classifier, project).promoted
    pretrained = tiny_config(project, wandb="disabled", name="digits-net", objective="contrastive")
    train(pretrained, project)
    evaluate(pretrained, project)
    decision = register(pretrained, project, force=True)
    assert not decision.promoted
    assert "trained for contrastive, champion v1 for classification" in decision.reason


def test_the_self_supervised_models_build_and_reload_from_their_settings():
    from assay.config.task import Task

    text = Task(kind="text", in_shape=(12,), num_classes=2, vocab_size=50, pad_id=0)
    for arch, task, objective, x in [
        ("mlp_tiny", IMAGES, "contrastive", torch.rand(3, 1, 8, 8)),
        ("cnn_tiny", IMAGES, "contrastive", torch.rand(3, 1, 8, 8)),
        ("transformer_tiny", text, "masked_tokens", torch.randint(2, 50, (3, 12))),
    ]:
        model = create_model(arch, task=task, objective=objective)
        again = type(model)(**model.hparams)  # what a checkpoint's reload does
        assert again.objective.name == objective
        out = again.inference_model()(x)
        wide = 64 if objective == "contrastive" else (3, 12)
        assert (out.shape[1] if objective == "contrastive" else tuple(out.shape)) == wide


def test_an_lstm_has_no_masked_token_objective(project):
    with pytest.raises(ConfigError, match="lstm_tiny' on text data trains for classification,"):
        family_cfg(project, "rotten_tomatoes", "lstm_tiny", objective="masked_tokens")


@pytest.mark.slow
def test_masked_tokens_beat_the_most_frequent_token_and_hand_their_encoder_to_a_classifier(
    fproject,
):
    cfg = family_cfg(
        fproject,
        "rotten_tomatoes",
        "transformer_tiny",
        objective="masked_tokens",
        max_epochs=3,
        batch_size=64,
        lr=0.003,
    )
    assert cfg.train.key == "rotten_tomatoes-transformer_tiny-masked_tokens"
    run_id = train(cfg, fproject).run_id
    scores = evaluate(cfg, fproject).metrics
    # the floor: always answering the training split's most frequent token
    x = np.load(fproject / "data/rotten_tomatoes/train.npz")["x"]
    counts = np.bincount(x[x > 1])
    test = np.load(fproject / "data/rotten_tomatoes/test.npz")["x"]
    floor = float((test[test > 1] == counts.argmax()).mean())
    assert scores["test/masked_acc"] > floor, (scores, floor)
    assert np.isclose(scores["test/perplexity"], np.exp(scores["test/loss"]))

    ft = family_cfg(
        fproject, "rotten_tomatoes", "transformer_tiny", init_from=f"runs:/{run_id}/model"
    )
    _, model = engine.build(ft, fproject)
    assert model.net.head.out_features == 2 and model.init_from["assay.init_from.layers"] != "0"
