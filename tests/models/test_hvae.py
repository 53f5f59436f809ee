import itertools

import pytest
import torch

from models import load_model
from models.hvae import HierarchicalVAE
from tests.families import FAMILIES
from tests.helpers import quiet_trainer, save_checkpoint


def tiny(morpho, **kwargs) -> HierarchicalVAE:
    model = FAMILIES["hvae"][0](morpho)
    if kwargs:
        model = HierarchicalVAE(**{**model.hparams, **kwargs})
    model.log_dict = lambda *a, **k: None
    return model


@pytest.mark.parametrize("patch", [1, 2])  # every pixel, and 2 x 2 blocks (space-to-depth)
@pytest.mark.parametrize("cond_prior", [False, True])  # the default, and the latent mediator
def test_abduction_returns_every_level_and_null_prediction_is_exact(
    morpho, test_batch, patch, cond_prior
):
    model = tiny(morpho, patch=patch, cond_prior=cond_prior).eval()
    x, pa = test_batch["x"], test_batch["pa"]
    noise = model.abduct(x, pa, residual=False)
    assert len(noise.image.levels) == 2 and noise.image.residual is None
    assert noise.image.levels[0].shape == (len(x), 2, 4, 4)
    assert noise.image.levels[1].shape[-1] == 8
    # without the residual, the null intervention decodes the abducted latents' image
    with torch.no_grad():
        net = model.mechanism
        y = x * 2 - 1
        _, latents = net.top_down(net.parents(pa), "abduct", encoded=net.encode(y), temperature=0.0)
        expected, _ = net.top_down(net.parents(pa), "predict", noise=latents)
    cf = model.counterfactual(x, pa, {}, residual=False)
    assert torch.allclose(cf.image, (expected.expected + 1) / 2, atol=1e-5)


def test_ema_checkpoint_loads_and_predicts_with_ema_weights(morpho, test_batch, tmp_path):
    model = tiny(morpho, ema_decay=0.5)
    optimiser = model.configure_optimizers()
    for batch in itertools.islice(itertools.cycle(morpho.train_dataloader()), 5):
        loss = model._step(batch, "train")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.on_train_batch_end(None, None, 0)
    raw = {k: v.clone() for k, v in model.net.state_dict().items()}
    ema = {k: v.clone() for k, v in model.ema_net.state_dict().items()}
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the average lags the weights
    loaded = load_model(save_checkpoint(model, tmp_path / "ema.ckpt"))
    assert loaded.mechanism is loaded.ema_net
    assert all(torch.equal(loaded.ema_net.state_dict()[k], ema[k]) for k in ema)
    x, pa = test_batch["x"], test_batch["pa"]
    with_ema = loaded.counterfactual(x, pa, {"thickness": 4.0}, residual=False).image
    loaded.ema_net.load_state_dict(raw)  # the raw weights predict something else
    assert not torch.allclose(
        with_ema, loaded.counterfactual(x, pa, {"thickness": 4.0}, residual=False).image
    )


def test_outlier_updates_are_skipped(morpho):
    model = tiny(morpho, skip_grad_norm=1e-6)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer.fit(model, train_dataloaders=morpho.train_dataloader())
    assert int(model.skipped_updates) == 3
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def _bottleneck_params(inner: int, middle: int, out: int, kernel: int) -> int:
    """1x1 -> kxk -> kxk -> 1x1 convolutions, with biases."""
    return (
        (inner * middle + middle)
        + 2 * (middle * middle * kernel**2 + middle)
        + (middle * out + out)
    )


def test_every_resolution_s_width_is_honoured(morpho):
    """A parameter count from the config alone equals the built mechanism's."""
    widths = {32: 8, 16: 16, 8: 24, 4: 32, 1: 48}
    levels = {1: 1, 4: 2, 8: 1, 16: 1}  # no latent at 32: a refine block there
    blocks = {32: 1, 16: 2, 8: 1, 4: 1, 1: 3}
    z, bottleneck = 3, 4
    model = tiny(
        morpho,
        width=[[r, w] for r, w in widths.items()],
        levels=[[r, n] for r, n in levels.items()],
        encoder_blocks=[[r, n] for r, n in blocks.items()],
        z_channels=z,
        patch=1,
        bottleneck=bottleneck,
        cond_prior=True,
    )
    parents = model.mechanism.parents.dim
    channels = morpho.image_shape[0]
    expected = (channels * 9 * widths[32] + widths[32]) + (
        widths[32] * 9 * 2 * channels + 2 * channels
    )
    expected += widths[1]  # the learned start of the top-down pass, 1 x 1
    resolutions = sorted(widths, reverse=True)
    for r in resolutions:
        w, m, k = widths[r], widths[r] // bottleneck, 3 if r > 2 else 1
        expected += blocks[r] * _bottleneck_params(w, m, w, k)
        level = (
            _bottleneck_params(w + parents, m, 2 * z + w, k)  # prior
            + _bottleneck_params(2 * w + parents, m, 2 * z, k)  # posterior
            + (z + parents) * w
            + w  # merge
            + _bottleneck_params(w, m, w, k)  # block
        )
        expected += levels.get(r, 0) * level
        if r not in levels:
            expected += _bottleneck_params(w, m, w, k)  # refine
    for fine, coarse in zip(resolutions, resolutions[1:]):
        expected += 2 * (widths[fine] * widths[coarse] + widths[fine])  # proj. both ways
        expected += widths[coarse] - widths[fine]  # the biases differ by direction
    assert sum(p.numel() for p in model.mechanism.parameters()) == expected
    encoder = model.mechanism.encoder
    assert [encoder[str(r)][0].net[1].in_channels for r in resolutions] == list(widths.values())


def test_per_resolution_ladder_null_intervention_is_exact(morpho, test_batch):
    model = tiny(
        morpho, width=[[32, 8], [16, 16], [4, 32]], levels=[[4, 1], [16, 1]], patch=1
    ).eval()
    x, pa = test_batch["x"], test_batch["pa"]
    assert torch.allclose(model.counterfactual(x, pa, {}).image, x, atol=1e-5)
    noise = model.abduct(x, pa, residual=False)
    assert [level.shape[-1] for level in noise.image.levels] == [4, 16]


@pytest.mark.parametrize(
    ("width", "message"),
    [
        ([[32, 8], [12, 16]], "power-of-2 fraction"),
        ([[16, 8], [8, 16]], "from 32"),
        ([[32, 8], [16, 16]], r"latent resolutions \[4\]"),
    ],
)
def test_bad_ladders_are_refused_with_the_reason(morpho, width, message):
    with pytest.raises(ValueError, match=message):
        tiny(morpho, width=width, levels=[[4, 1], [16, 1]], patch=1)


def test_encoder_blocks_must_name_every_resolution(morpho):
    with pytest.raises(ValueError, match="encoder_blocks names resolutions"):
        tiny(morpho, width=[[32, 8], [16, 16], [8, 16], [4, 32]], encoder_blocks=[[32, 1]], patch=1)
