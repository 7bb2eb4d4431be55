"""Every registered architecture: builds, runs forward and backward, and takes an optimiser step."""

from __future__ import annotations

import pytest
import torch

import models
from models import Task, create_model, list_models
from models.base import OptimConfig
from models.registry import UnknownModelError, register_model

TASKS = {
    "mnist": Task(in_shape=(1, 28, 28), num_classes=10),
    "digits": Task(in_shape=(1, 8, 8), num_classes=10),
}


@pytest.mark.parametrize("task", TASKS.values(), ids=TASKS.keys())
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_step(name, task):
    torch.manual_seed(0)
    model = create_model(name, task=task)
    x, y = torch.rand(8, *task.in_shape), torch.randint(0, task.num_classes, (8,))
    model.train()
    logits = model(x)
    assert logits.shape == (8, task.num_classes)  # (B, K)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    before = [p.detach().clone() for p in model.parameters()]
    opt = models.base.make_optimizer(model.parameters(), model.optim)
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    probs = model.inference_model()(x)
    assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_training_techniques_are_wired(optimizer, activation):
    optim = OptimConfig(optimizer=optimizer, lr=0.01, weight_decay=1e-4, l1=1e-4)
    model = create_model("mlp_tiny", task=TASKS["digits"], optim=optim, activation=activation)
    opt = models.base.make_optimizer(model.parameters(), model.optim)
    assert type(opt).__name__.lower() == optimizer
    assert opt.defaults["weight_decay"] == 1e-4
    acts = {type(m).__name__.lower() for m in model.net.modules()}
    assert {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu"}[
        activation
    ] in acts
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    # L1 adds the weights' absolute sum to the training loss
    loss_l1 = model._step((x, y), "train")
    model.optim = optim.model_copy(update={"l1": 0.0})
    assert loss_l1 > model._step((x, y), "train")


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet50", task=TASKS["mnist"])
    for name in list_models():
        assert name in str(info.value)


def test_registry_refuses_duplicates_and_has_tiny_presets():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn")(models.cnn.CNNClassifier)
    for name in list_models():
        if not name.endswith("_tiny"):
            assert f"{name}_tiny" in list_models(), f"{name} has no tiny preset"


def test_checkpoint_hparams_rebuild_the_same_model(tmp_path):
    model = create_model("cnn_tiny", task=TASKS["digits"], activation="tanh")
    clone = type(model)(**model.hparams)
    assert clone.config == model.config and clone.task == model.task
