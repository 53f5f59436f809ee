import itertools

import pytest
import torch

from metrics.soundness import composition
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
    assert sorted(noise.image) == ["u0", "u1"]
    assert noise.image["u0"].shape == (len(x), 2, 4, 4) and noise.image["u1"].shape[-1] == 8
    # without the residual, the null intervention decodes the abducted latents' image
    with torch.no_grad():
        net = model.mechanism
        y = x * 2 - 1
        _, latents = net.top_down(model.parents(pa), "abduct", acts=net.encode(y), temperature=0.0)
        expected, _ = net.top_down(model.parents(pa), "predict", noise=latents)
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


def test_counterfactual_training_improves_the_predictor_loss(morpho, tiny_predictor, tmp_path):
    torch.manual_seed(0)
    base = tiny(morpho, ema_decay=0.0)
    trainer = quiet_trainer(max_steps=20, limit_val_batches=0)
    trainer.fit(base, train_dataloaders=morpho.train_dataloader())
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    predictor_path = save_checkpoint(tiny_predictor, tmp_path / "judge.ckpt")

    def cf_loss(model) -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            losses = [
                model.counterfactual_loss(batch, tiny_predictor)
                for batch in itertools.islice(morpho.val_dataloader(), 2)
                for _ in range(5)
            ]
        return float(torch.stack(losses).mean())

    finetuned = tiny(
        morpho,
        ema_decay=0.0,
        lr=3e-3,
        cf_finetune={
            "init_ckpt": str(tmp_path / "stage1.ckpt"),
            "predictor_ckpt": str(predictor_path),
            "elbo_slack": 0.05,
            "lagrange_lr": 0.1,
        },
    )
    trainer = quiet_trainer(max_steps=40, limit_val_batches=0)
    trainer.fit(finetuned, datamodule=morpho)
    before, after = cf_loss(base), cf_loss(finetuned)
    assert after < 0.9 * before

    # The stage must not loosen composition: with the pixel residual (the default) the null
    # intervention stays exact however the decoder moved (bound: 1e-3 on the 0-255 scale).
    # Without it, the composition is the decoder's reconstruction error, which the ELBO constraint
    # holds; benchmarks/zoo.py measures that one at real scale (README, HVAE).
    batch = next(iter(morpho.val_dataloader()))
    null = composition(finetuned.eval(), batch["x"], batch["pa"], 2, residual=True)
    assert float(null.max()) < 1e-3
    assert torch.isfinite(finetuned.elbo_target) and finetuned.lagrange >= 0
    # the judge is not part of the fine-tuned model's checkpoint
    reloaded = load_model(save_checkpoint(finetuned, tmp_path / "stage2.ckpt"))
    assert not any(k.startswith("_judge") for k in reloaded.state_dict())


def test_the_judges_loss_trains_the_decoder_not_the_encoder(morpho, tiny_predictor):
    torch.manual_seed(0)
    model = tiny(morpho)
    model.counterfactual_loss(next(iter(morpho.train_dataloader())), tiny_predictor).backward()
    net = model.net
    encoder = [net.stem, net.encoder, *(level.posterior for level in _levels(net))]
    decoder = [net.head, *(level.merge for level in _levels(net))]
    assert all(p.grad is None for part in encoder for p in part.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for part in decoder for p in part.parameters()
    )


def _levels(net):
    return [level for levels in net.decoder.values() for level in levels]


def test_cf_training_needs_a_pretrained_model(morpho):
    model = tiny(morpho, cf_finetune={"init_ckpt": None})
    trainer = quiet_trainer(max_steps=1)
    with pytest.raises(ValueError, match="init_ckpt"):
        trainer.fit(model, datamodule=morpho)
