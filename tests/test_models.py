"""Every registered architecture, on every kind of data it trains on: builds, runs a training
step forward and backward, takes an optimiser step, and its logged inference network gives the
documented output. Shapes here are small stand-ins; tests/test_families.py trains on real data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import assay.models as models
from assay.config.architectures import get_architecture, list_architectures
from assay.models import Task, create_model, get_entry, list_models
from assay.models.base import OptimConfig
from assay.models.registry import UnknownModelError, register_model

B = 6
TASKS = {
    "mnist": Task(in_shape=(1, 28, 28), num_classes=10),
    "digits": Task(in_shape=(1, 8, 8), num_classes=10),
    "text": Task(kind="text", in_shape=(12,), vocab_size=50, num_classes=2),
    "timeseries": Task(
        kind="timeseries", in_shape=(16, 3), horizon=4, season=8, mean=[3, 10, 0], std=[1, 5, 1]
    ),
    "tabular": Task(kind="tabular", in_shape=(9,), num_classes=2, mean=[0] * 9, std=[2] * 9),
    "ratings": Task(
        kind="ratings", in_shape=(2,), n_users=10, n_items=20, mean=[3.5], item_counts=[0, 5] * 10
    ),
}


def batch(task: Task):
    g = torch.Generator().manual_seed(0)
    if task.kind == "image":
        return torch.rand(B, *task.in_shape, generator=g), torch.randint(0, 10, (B,), generator=g)
    if task.kind == "text":
        x = torch.randint(1, task.vocab_size, (B, task.in_shape[0]), generator=g)
        x[:, 7:] = 0  # padding
        x[0, 2:] = 0
        return x, torch.randint(0, 2, (B,), generator=g)
    if task.kind == "timeseries":
        return torch.randn(B, *task.in_shape, generator=g) + 3, torch.randn(B, task.horizon) + 3
    if task.kind == "tabular":
        return torch.randn(B, 9, generator=g), torch.zeros(B, dtype=torch.long)
    u, i = torch.randint(0, 10, (B,), generator=g), torch.randint(0, 20, (B,), generator=g)
    position = torch.rand(B, generator=g)  # each rating's place in its user's history
    return u, i, position, torch.randint(1, 6, (B,), generator=g).float()


CASES = [
    (name, kind)
    for name in list_models()
    for kind, task in TASKS.items()
    if task.kind in get_entry(name).module_cls.OBJECTIVES
]


def _expected_shape(model, task: Task) -> tuple[int, ...]:
    return {
        "classification": (B, task.num_classes),
        "forecast": (B, task.horizon),
        "reconstruction": (B, *task.in_shape),
        "anomaly": (B,),
        "generation": (B, *task.in_shape),
        "rating": (B,),
    }[model.objective.name]


@pytest.mark.parametrize(("name", "data"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_training_step_and_inference(name, data):
    torch.manual_seed(0)
    task = TASKS[data]
    model = create_model(name, task=task)
    b = batch(task)
    model.train()
    if model.automatic_optimization:
        loss = model._step(b, "train")
    else:  # the GAN: both players' losses through the module's own functions
        fake = model(torch.randn(B, model.config.latent_dim))
        loss = model._d_loss(b[0], fake) + model.net.discriminator(fake).mean()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None)
    before = [p.detach().clone() for p in trainable]
    models.base.make_optimizer(trainable, model.optim).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable, strict=True))

    net = model.inference_model()
    example = b[0] if task.kind != "ratings" else torch.stack(b[:2], 1)
    example = model.inference_example(example)
    with torch.no_grad():
        out = net(example)
    assert tuple(out.shape) == _expected_shape(model, task)
    if model.objective.name == "classification":
        assert torch.allclose(out.sum(-1), torch.ones(B), atol=1e-5)
    if model.objective.name in ("generation", "reconstruction"):
        assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_padding_does_not_change_a_text_prediction():
    """Padded positions are masked (RNN: packed; Transformer: key padding), so more padding
    gives the same logits."""
    for name in ("lstm_tiny", "gru_tiny", "transformer_tiny"):
        torch.manual_seed(0)
        short = Task(kind="text", in_shape=(8,), vocab_size=50, num_classes=2)
        model = create_model(name, task=short).eval()
        x = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])
        longer = torch.cat([x, torch.zeros(1, 8, dtype=torch.long)], 1)
        with torch.no_grad():
            assert torch.allclose(model(x), model(longer), atol=1e-5), name


def test_forecasters_take_raw_units_and_start_from_the_seasonal_naive():
    task = TASKS["timeseries"]
    model = create_model("lstm_tiny", task=task).eval()
    with torch.no_grad():
        for p in model.net.head.parameters():
            p.zero_()
        x = torch.randn(2, 16, 3) * 4 + 7
        # a zero head adds nothing to the residual: the forecast is exactly the seasonal naive
        assert torch.allclose(model(x), x[:, -8:, 0][:, torch.arange(4) % 8], atol=1e-5)


@pytest.mark.parametrize("name", ["gru_tiny", "transformer_tiny"])
def test_level_norm_makes_a_forecast_follow_the_level_and_the_skip_is_linear(name):
    """level_norm: the same window one unit higher gives the same forecast one unit higher,
    whatever the weights; linear_skip: with the encoder's head zeroed, the forecast is the
    seasonal naive plus a linear map of the window."""
    task = TASKS["timeseries"]
    torch.manual_seed(0)
    model = create_model(name, task=task, level_norm=True, linear_skip=True).eval()
    x = torch.randn(3, 16, 3) * 2 + 5
    up = x.clone()
    up[:, :, 0] += 1.5  # the target column, in raw units (std 1)
    with torch.no_grad():
        assert torch.allclose(model(up), model(x) + 1.5, atol=1e-4)
        for p in model.net.head.parameters():
            p.zero_()
        naive = x[:, -8:, 0][:, torch.arange(4) % 8]
        skip = model(x) - naive
        assert skip.abs().max() > 1e-3  # the skip adds something of its own ...
        for p in model.net.skip.parameters():  # ... and nothing else does
            p.zero_()
        assert torch.allclose(model(x), naive, atol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_training_techniques_are_wired(optimizer, activation):
    optim = OptimConfig(optimizer=optimizer, lr=0.01, weight_decay=1e-4, l1=1e-4)
    model = create_model("mlp_tiny", task=TASKS["digits"], optim=optim, activation=activation)
    opt = models.base.make_optimizer(model.parameters(), model.optim)
    assert type(opt).__name__.lower() == optimizer
    assert opt.defaults["weight_decay"] == 1e-4
    acts = {type(m).__name__.lower() for m in model.net.modules()}
    assert activation in acts
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    # L1 adds the weights' absolute sum to the training loss
    loss_l1 = model._step((x, y), "train")
    model.optim = optim.model_copy(update={"l1": 0.0})
    assert loss_l1 > model._step((x, y), "train")


def test_a_model_refuses_data_it_cannot_train_on():
    with pytest.raises(ValueError, match="trains on text, timeseries data, not image"):
        create_model("lstm_tiny", task=TASKS["digits"])


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet50", task=TASKS["mnist"])
    for name in list_models():
        assert name in str(info.value)


def test_registry_refuses_duplicates_and_has_tiny_presets():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn")(models.cnn.CNNClassifier)
    expected = {
        "mlp",
        "cnn",
        "rnn",
        "lstm",
        "gru",
        "transformer",
        "autoencoder",
        "denoising_autoencoder",
        "vae",
        "gan",
        "matrix_factorization",
        "ncf",
    }
    assert expected <= set(list_models())
    for name in list_models():
        if not name.endswith("_tiny"):
            assert f"{name}_tiny" in list_models(), f"{name} has no tiny preset"


def test_every_declared_architecture_has_its_module_and_nothing_else_registers():
    """The torch-free declarations (assay.config.architectures) and the modules of models/ are
    one set: a declaration without a module, or a module without a declaration, fails here."""
    assert list_models() == list_architectures()
    for name in list_models():
        entry, arch = get_entry(name), get_architecture(name)
        assert entry.module_cls.Config is arch.settings
        assert entry.module_cls.OBJECTIVES == arch.trains_on
        assert entry.preset == arch.preset


def test_a_module_for_an_undeclared_architecture_or_other_settings_is_refused():
    with pytest.raises(UnknownModelError, match="unknown architecture 'resnet'"):
        register_model("resnet")(models.cnn.CNNClassifier)
    with pytest.raises(TypeError, match="must be MLPConfig"):
        register_model("mlp")(models.cnn.CNNClassifier)


def test_checkpoint_hparams_rebuild_the_same_model(tmp_path):
    model = create_model("cnn_tiny", task=TASKS["digits"], activation="tanh")
    clone = type(model)(**model.hparams)
    assert clone.config == model.config and clone.task == model.task


def test_conditional_gan_codes_carry_the_class():
    torch.manual_seed(0)
    model = create_model("gan_tiny", task=TASKS["mnist"], conditional=True)
    codes, classes = model.sample_codes(B, seed=0)
    latent = model.config.latent_dim
    assert codes.shape == (B, latent + 10) and classes.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(codes[:, latent:].argmax(1), classes)  # one-hot class after z
    assert model.inference_example(torch.zeros(B, 1, 28, 28)).shape == (B, latent + 10)
    images, asked = model.generate(B, seed=0, with_classes=True)
    assert images.shape == (B, 1, 28, 28) and torch.equal(asked, classes)

    # the projection discriminator scores the same image differently under different classes
    real, y = batch(TASKS["mnist"])
    d = model.net.discriminator.eval()
    assert not torch.allclose(d(real, y), d(real, (y + 1) % 10))
    with pytest.raises(ValueError, match="needs the images' classes"):
        d(real)
    loss = model._d_loss(real, model(codes), y, classes)
    loss.backward()
    assert model.net.discriminator.embed.weight.grad.abs().sum() > 0

    unconditional = create_model("gan_tiny", task=TASKS["mnist"])
    assert unconditional.sample_codes(B, seed=0)[1] is None
    assert unconditional.card() == {"code": {"latent_dim": latent, "classes": 0}}
    with pytest.raises(ValueError, match="needs a labelled data set"):
        create_model("gan_tiny", task=Task(in_shape=(1, 28, 28)), conditional=True)


@pytest.mark.parametrize("name", ["matrix_factorization_tiny", "ncf_tiny"])
def test_popularity_bias_is_shared_by_the_items_of_one_count_bin(name):
    counts = [0, 1, 2, 3, 300, 400]
    task = Task(kind="ratings", in_shape=(2,), n_users=3, n_items=6, mean=[3.5], item_counts=counts)
    net = create_model(name, task=task).net.eval()
    assert net.offsets.popularity.bins.tolist() == [0, 1, 1, 2, 8, 8]  # floor(log2(count + 1))
    users, items = torch.zeros(6, dtype=torch.long), torch.arange(6)
    with torch.no_grad():
        before = net(users, items)
        net.offsets.popularity.bias.weight[8] = 1.0  # the bin of the two popular films
        shift = net(users, items) - before
    assert torch.allclose(shift, torch.tensor([0, 0, 0, 0, 1.0, 1.0]))
    # the bins travel with the network's state, so a logged model predicts with them
    assert "offsets.popularity.bins" in net.state_dict()
    off = create_model(name, task=task, popularity_bias=False).net
    assert off.offsets.popularity is None
    with pytest.raises(ValueError, match="item_counts has 5 entries for 6 items"):
        create_model(name, task=task.model_copy(update={"item_counts": counts[:5]}))


@pytest.mark.parametrize("name", ["matrix_factorization_tiny", "ncf_tiny"])
def test_recent_user_bias_is_fitted_by_a_users_latest_ratings_and_added_to_any_prediction(name):
    task = Task(kind="ratings", in_shape=(2,), n_users=2, n_items=3, mean=[3.5])
    net = create_model(name, task=task, recent_user_bias=0.25).net.eval()
    users, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0])
    position = torch.tensor([0.5, 0.75, 0.8, 1.0])  # only those past 1 - 0.25 are "recent"
    with torch.no_grad():
        before, before_now = net(users, items, position), net(users, items)
        net.offsets.recent.bias.weight[:] = torch.tensor([[1.0], [2.0]])
        shift = net(users, items, position) - before
        shift_now = net(users, items) - before_now  # no position: a prediction, i.e. now
    assert torch.allclose(shift, torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert torch.allclose(shift_now, torch.tensor([1.0, 1.0, 1.0, 2.0]))
    # a training step through the module: a batch is (user, item, position, rating)
    model = create_model(name, task=task, recent_user_bias=0.25)
    loss = model.training_step((users, items, position, torch.tensor([4.0, 3, 2, 5])), 0)
    loss.backward()
    grad = model.net.offsets.recent.bias.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    base = name.removesuffix("_tiny")  # the tiny preset turns it on, to exercise it
    assert create_model(base, task=task).net.offsets.recent is None  # off by default


@pytest.mark.parametrize("name", ["matrix_factorization_tiny", "ncf_tiny"])
def test_attribute_bias_adds_each_attribute_an_item_has(name):
    attrs = [[0], [0, 1], [], [2]]
    task = Task(
        kind="ratings",
        in_shape=(2,),
        n_users=2,
        n_items=4,
        mean=[3.5],
        item_attributes=attrs,
        n_item_attributes=3,
    )
    net = create_model(name, task=task).net.eval()
    users, items = torch.zeros(4, dtype=torch.long), torch.arange(4)
    with torch.no_grad():
        before = net(users, items)
        net.offsets.attributes.weight.weight[:] = torch.tensor([[1.0, 10.0, 100.0]])
        shift = net(users, items) - before
    assert torch.allclose(shift, torch.tensor([1.0, 11.0, 0.0, 100.0]))
    assert "offsets.attributes.attributes" in net.state_dict()  # a logged model keeps them
    assert create_model(name, task=task, attribute_bias=False).net.offsets.attributes is None
    # data without attributes: no attribute bias, whatever the setting
    assert create_model(name, task=TASKS["ratings"]).net.offsets.attributes is None
    with pytest.raises(ValueError, match="item_attributes has 3 entries for 4 items"):
        create_model(name, task=task.model_copy(update={"item_attributes": attrs[:3]}))


def test_val_acc_is_the_fraction_right_like_test_acc():
    """train/ and val/acc are what test/acc is, the fraction of samples classified right; not
    torchmetrics' default (macro: the mean of per-class recalls), which differs on unbalanced
    classes and made the validation accuracy of a 270-image split no multiple of 1/270."""
    from assay.objectives import get_objective

    metric = get_objective("classification").step_metric(TASKS["digits"])
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 0, 1, 0, 2, 1])  # 6 of 8 right; recalls 1, 1/2, 1/2
    logits = torch.nn.functional.one_hot(pred, 10).float()
    metric.update(logits[:5], target[:5])  # two batches of unequal size, as an epoch's last
    metric.update(logits[5:], target[5:])
    assert float(metric.compute()) == pytest.approx(6 / 8)


def test_the_cnn_holds_its_weights_channels_last_and_answers_as_a_contiguous_copy():
    """The CNN runs channels-last (faster on CPU, see models/cnn.py) on the usual NCHW input; a
    contiguous copy of the same weights (as checkpoints from before were) answers the same."""
    task = Task(kind="image", in_shape=(3, 16, 16), num_classes=4)  # 3 channels: really reordered
    model = create_model("cnn", task=task).eval()
    convs = [m for m in model.net if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    for c in convs:
        assert c.weight.is_contiguous(memory_format=torch.channels_last)
        assert not c.weight.is_contiguous()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        fast = model(x)
        plain = copy.deepcopy(model.net[1:]).to(memory_format=torch.contiguous_format)
        assert all(m.weight.is_contiguous() for m in plain if isinstance(m, torch.nn.Conv2d))
        assert torch.allclose(fast, plain(x), atol=1e-5)
        # a checkpoint saved contiguous loads into the channels-last model, which stays so
        again = create_model("cnn", task=task).eval()
        again.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
        assert again.net[1].weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(again(x), fast, atol=1e-6)


def _sensor_rows(n: int, seed: int = 0) -> np.ndarray:
    """Integer readings with long runs of ties and a heavy tail, like Shuttle's sensors."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(40, 6, (n, 3)))
    x[:, 1] = np.where(rng.random(n) < 0.9, 0, np.round(rng.standard_t(1, n) * 30))
    x[:, 2] = rng.integers(0, 4, n)
    return x.astype(np.float32)


def test_quantile_scaling_is_scikit_learns_quantile_transformer_inside_the_net():
    from scipy.special import ndtri
    from sklearn.preprocessing import QuantileTransformer

    from assay.models.base import QuantileNormal

    train, rows = _sensor_rows(5000), _sensor_rows(500, seed=1)
    rows[0] = [400, -9000, 7]  # beyond every training value: the ends, not hundreds of stds
    knots = np.percentile(train, np.linspace(0, 100, 101), axis=0)
    ours = QuantileNormal(knots.tolist())
    theirs = QuantileTransformer(n_quantiles=101, output_distribution="normal", subsample=None)
    z = ours(torch.from_numpy(rows)).numpy()
    at_min = rows == knots[0]  # scikit-learn sends these to the bottom (see QuantileNormal)
    np.testing.assert_allclose(z[~at_min], theirs.fit(train).transform(rows)[~at_min], atol=1e-4)
    assert z[0, 0] == z[0, 2] == pytest.approx(5.1993, abs=1e-3)  # beyond the training range
    assert np.abs(z).max() < 5.2
    # the ties at a minimum go to the middle of their run, as any run's
    ties = (train[:, 2] == 0).mean()
    assert z[rows[:, 2] == 0, 2] == pytest.approx(ndtri(ties / 2), abs=0.05)
    inside = torch.from_numpy(rows[1:])
    back = ours.inverse(ours(inside))  # a tie maps to its run's middle and back to its value
    assert torch.allclose(back, inside, atol=0.5)


def test_an_ensemble_of_autoencoders_trains_each_member_and_scores_by_their_mean():
    train = _sensor_rows(2000)
    knots = np.percentile(train, np.linspace(0, 100, 101), axis=0)
    task = TASKS["tabular"].model_copy(update={"in_shape": (3,), "quantiles": knots.tolist()})
    torch.manual_seed(0)
    model = create_model("autoencoder_tiny", task=task, scaling="quantile", ensemble=3)
    members = model.members()
    assert len(members) == 3
    assert not torch.equal(members[0].decoder[-1].weight, members[1].decoder[-1].weight)
    x = torch.from_numpy(train[:64])
    model._step((x, torch.zeros(64, dtype=torch.long)), "train").backward()
    assert all(m.decoder[-1].weight.grad.abs().sum() > 0 for m in members)
    with torch.no_grad():
        mean = torch.stack([m.score(x) for m in members]).mean(0)
        assert torch.allclose(model.anomaly_score(x), mean)
        assert torch.allclose(model.inference_model()(x), mean)
    # one member is the plain net, as before ensembles: its checkpoints load as they did
    one = create_model("autoencoder_tiny", task=task)
    assert "net.encoder.1.weight" in one.state_dict() and one.members() == [one.net]


def test_quantile_scaling_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="scaling: quantile is for tabular rows"):
        create_model("autoencoder_tiny", task=TASKS["digits"], scaling="quantile")
    with pytest.raises(ValueError, match="prepare it again"):
        create_model("autoencoder_tiny", task=TASKS["tabular"], scaling="quantile")
