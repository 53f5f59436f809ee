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
        _, latents = net.top_down(net.parents(pa), "abduct", acts=net.encode(y), temperature=0.0)
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
