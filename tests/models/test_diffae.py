"""The diffusion autoencoder: DDIM abduction in both designs, options, guidance, checkpoints, the
causal latent.

Both modes also run the whole counterfactual contract (``FAMILIES`` in conftest.py).
"""

import pytest
import torch

from metrics.soundness import composition
from models import load_model
from models.diffae import DiffusionAutoencoder
from models.nn.diffusion import build_schedulers, ddim_sample
from tests.families import fit_briefly, tiny_diffae
from tests.helpers import save_checkpoint

#: Max and mean absolute error on [0, 1] of inverting then sampling (10 DDIM steps, 5 fixed-point
#: refinements per inversion step) on the briefly trained tiny model, against the input (pixel
#: design) or against the first stage's reconstruction (latent design, residual off). Pixel design:
#: measured max 0.07-0.24 and mean 0.003-0.010 over seeds 0-2; plain DDIM inversion (0
#: refinements) reaches max 1.0.
RECONSTRUCTION_BOUND = 0.5
RECONSTRUCTION_MEAN_BOUND = 0.02


def build(morpho, **kwargs) -> DiffusionAutoencoder:
    torch.manual_seed(0)
    model = tiny_diffae(morpho, **kwargs)
    model.log_dict = lambda *args, **kw: None  # no Trainer attached
    return model


@pytest.fixture(scope="module")
def trained(morpho):
    model = build(morpho)
    fit_briefly(model, morpho)
    return model


@pytest.fixture(scope="module")
def pixel(morpho):
    model = build(morpho, autoencoder=None)
    fit_briefly(model, morpho)
    return model


@pytest.fixture(scope="module")
def causal(morpho):
    model = build(morpho, causal_latent=True)
    fit_briefly(model, morpho)
    return model


def count_unet_calls(model, monkeypatch) -> list[int]:
    """Count the calls of the UNet that counterfactuals use (until the test ends)."""
    calls = [0]
    unet = model.mechanism.unet
    forward = unet.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counted)
    return calls


@pytest.mark.parametrize("design", ["latent", "pixel"])
def test_inversion_then_sampling_reconstructs_the_input(design, trained, pixel, test_batch):
    model = trained if design == "latent" else pixel
    x, pa = test_batch["x"], test_batch["pa"]
    target = x
    options = {}
    if design == "latent":  # the inversion's own error: against the first stage's reconstruction
        autoencoder = model.mechanism.autoencoder
        with torch.no_grad():
            target = (autoencoder.decode(autoencoder.encode(x * 2 - 1)).expected + 1) / 2
        options = {"residual": False}
    errors = {}
    for iters in (0, 5):
        cf = model.counterfactual(x, pa, {}, steps=10, inversion_iters=iters, **options)
        errors[iters] = (cf.image - target).abs()
    assert errors[5].max() < RECONSTRUCTION_BOUND
    assert errors[5].mean() < RECONSTRUCTION_MEAN_BOUND
    # the fixed-point refinement makes the inversion more exact
    assert errors[5].mean() < errors[0].mean() / 2
    noise = model.abduct(x, pa, steps=2)
    assert noise.image.block_rest is None  # (causal mode: each block's rest)
    shape = (len(x), 2, 16, 16) if design == "latent" else x.shape
    assert noise.image.x_T.shape == shape and noise.image.latent.shape == (len(x), 4)
    assert (noise.image.residual is None) == (design == "pixel")


def test_the_residual_makes_the_null_intervention_exact_up_to_the_inversion(trained, test_batch):
    """With the residual, the null intervention's error is the decoder's change under the
    round-tripped latent, far below the first stage's own reconstruction error."""
    x, pa = test_batch["x"], test_batch["pa"]
    with_residual = (trained.counterfactual(x, pa, {}).image - x).abs().mean()
    alone = (trained.counterfactual(x, pa, {}, residual=False).image - x).abs().mean()
    assert with_residual < alone / 5, (float(with_residual), float(alone))


def test_abduction_is_deterministic(trained, test_batch):
    x, pa = test_batch["x"], test_batch["pa"]
    first, second = trained.abduct(x, pa, steps=2), trained.abduct(x, pa, steps=2)
    assert torch.equal(first.image.x_T, second.image.x_T)
    assert torch.equal(first.image.latent, second.image.latent)


def test_guidance_scale_changes_the_counterfactual(trained, test_batch, monkeypatch):
    x, pa = test_batch["x"], test_batch["pa"]
    do = {"thickness": lambda t: t + 1}
    plain = trained.counterfactual(x, pa, do, steps=4).image
    guided = trained.counterfactual(x, pa, do, steps=4, guidance_scale=3.0).image
    assert (plain - guided).abs().max() > 1e-3
    calls = count_unet_calls(trained, monkeypatch)
    trained.counterfactual(x, pa, do, guidance_scale=3.0, steps=2, inversion_iters=0)
    assert calls[0] == 4  # conditional and unconditional share one batched call per step


def test_steps_change_the_result_and_the_cost(trained, test_batch, monkeypatch):
    x, pa = test_batch["x"], test_batch["pa"]
    calls = count_unet_calls(trained, monkeypatch)
    images = {}
    for steps in (2, 4):
        calls[0] = 0
        images[steps] = trained.counterfactual(
            x, pa, {"intensity": 200.0}, steps=steps, inversion_iters=1
        ).image
        # inversion: one evaluation plus one refinement per step; sampling: one per step
        assert calls[0] == 3 * steps
    assert (images[2] - images[4]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "scheduler",
    [
        {"num_train_timesteps": 500, "beta_schedule": "squaredcos_cap_v2"},
        {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"beta_schedule": "scaled_linear", "beta_start": 2e-4, "beta_end": 0.012},
        {
            "num_train_timesteps": 200,
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        },
    ],
)
def test_checkpoint_restores_the_schedulers(morpho, test_batch, tmp_path, scheduler):
    """Every setting of the schedule survives a save and load: the same levels, the same steps,
    the same counterfactuals."""
    model = build(morpho, scheduler=scheduler, steps=3)
    loaded = load_model(save_checkpoint(model, tmp_path / "diffae.ckpt"))
    assert isinstance(loaded, DiffusionAutoencoder)
    for name in ("train_scheduler", "sampler", "inverter"):
        before, after = getattr(model.net, name), getattr(loaded.net, name)
        assert dict(before.config) == dict(after.config), name
        for key, value in scheduler.items():
            assert after.config[key] == value, (name, key)
        assert torch.equal(before.alphas_cumprod, after.alphas_cumprod)
        before.set_timesteps(7)
        after.set_timesteps(7)
        assert torch.equal(before.timesteps, after.timesteps)
    assert loaded.option_defaults() == {
        "steps": 3,
        "guidance_scale": 1.0,
        "inversion_iters": 5,
        "residual": True,
    }
    assert loaded.hparams["autoencoder"] == model.hparams["autoencoder"]
    x, pa = test_batch["x"][:4], {k: v[:4] for k, v in test_batch["pa"].items()}
    do = {"thickness": 4.0}
    assert torch.equal(
        model.eval().counterfactual(x, pa, do).image, loaded.counterfactual(x, pa, do).image
    )


def test_the_steps_option_passes_through_the_soundness_metrics(trained, test_batch):
    x, pa = test_batch["x"][:4], {k: v[:4] for k, v in test_batch["pa"].items()}
    curve = composition(trained, x, pa, 2, steps=2, inversion_iters=0)
    assert curve.shape == (2, 4)


@pytest.mark.parametrize("causal_latent", [False, True])
def test_semantic_bottleneck_samples_in_training_and_abducts_the_mean(
    morpho, test_batch, causal_latent
):
    model = build(morpho, semantic_kl=0.01, causal_latent=causal_latent)
    net, x, pa = model.mechanism, test_batch["x"], test_batch["pa"]
    with torch.no_grad():
        y = net.autoencoder.encode(x * 2 - 1)  # the semantic encoder reads the first stage's latent
    outputs = net.encoder(y)
    size, semantic = net.latent_size, net.semantic_dim
    assert outputs.shape == (len(x), size + semantic)  # latent, then the semantic log-sd
    mean, kl = net.encode(y, sample=False)
    assert torch.equal(mean, outputs[:, :size])
    log_sd = outputs[:, size:]
    expected = 0.5 * (mean[:, -semantic:] ** 2 + (2 * log_sd).exp() - 1 - 2 * log_sd).sum(1)
    torch.testing.assert_close(kl, expected)
    drawn, _ = net.encode(y, sample=True)
    assert torch.equal(drawn[:, : size - semantic], mean[:, : size - semantic])  # blocks: no noise
    assert (drawn[:, -semantic:] - mean[:, -semantic:]).abs().min() > 0
    # abduction takes the mean: deterministic, and its latent is the posterior mean
    model.eval()
    noise = model.abduct(x, pa, steps=2)
    torch.testing.assert_close(noise.image.latent, mean)
    torch.manual_seed(1)
    with torch.no_grad():
        loss, logs = model.mechanism.loss(test_batch["x"], test_batch["pa"])
    assert "semantic_kl" in logs and torch.isclose(logs["semantic_kl"], kl.mean())
    assert loss > logs["mse"]


def test_checkpoints_from_before_the_bottleneck_and_the_latent_design_load(
    morpho, test_batch, tmp_path
):
    old = build(morpho, semantic_kl=0.0, autoencoder=None).eval()
    path = save_checkpoint(old, tmp_path / "old.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    for key in ("semantic_kl", "autoencoder", "residual"):  # options that came later
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, path)
    loaded = load_model(path)
    assert loaded.net.semantic_kl == 0.0 and loaded.net.autoencoder is None
    assert "residual" not in loaded.options  # a pixel-space model has no first stage
    x, pa = test_batch["x"][:4], {k: v[:4] for k, v in test_batch["pa"].items()}
    assert torch.equal(
        old.counterfactual(x, pa, {"intensity": 150.0}, steps=2).image,
        loaded.counterfactual(x, pa, {"intensity": 150.0}, steps=2).image,
    )
    bottleneck = load_model(save_checkpoint(build(morpho, semantic_kl=0.01), tmp_path / "new.ckpt"))
    assert bottleneck.net.semantic_kl == 0.01


def test_bad_settings_raise_clear_errors(morpho, trained, test_batch):
    x, pa = test_batch["x"][:2], {k: v[:2] for k, v in test_batch["pa"].items()}
    with pytest.raises(ValueError, match="steps must be an integer"):
        trained.counterfactual(x, pa, {}, steps=0)
    with pytest.raises(ValueError, match="p_uncond > 0"):
        build(morpho, p_uncond=0.0).eval().counterfactual(x, pa, {}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="break exact DDIM inversion"):
        build(morpho, scheduler={"clip_sample": True})
    with pytest.raises(ValueError, match="unknown scheduler option"):
        build(morpho, scheduler={"num_steps": 10})
    with pytest.raises(ValueError, match="prediction_type must be"):
        build(morpho, scheduler={"prediction_type": "sample"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr needs"):
        build(morpho, scheduler={"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="semantic_kl must be >= 0"):
        build(morpho, semantic_kl=-1.0)
    with pytest.raises(ValueError, match="autoencoder has no setting"):
        build(morpho, autoencoder={"width": [8]})
    with pytest.raises(ValueError, match="use fewer autoencoder widths"):
        build(morpho, autoencoder={"widths": [4] * 6})
    with pytest.raises(ValueError, match="no counterfactual option"):
        build(morpho, autoencoder=None).eval().counterfactual(x, pa, {}, residual=False)
    with pytest.raises(ValueError, match="grad_steps must be >= 0"):
        build(morpho, grad_steps=-1)


@pytest.mark.parametrize(
    ("grad_steps", "x_T_gets_gradient"), [(None, True), (2, False), (0, False)]
)
def test_only_the_last_grad_steps_of_sampling_carry_gradients(grad_steps, x_T_gets_gradient):
    _, sampler, _ = build_schedulers()
    weight = torch.tensor(0.5, requires_grad=True)
    x_T = torch.randn(2, 1, 4, 4, requires_grad=True)
    out = ddim_sample(lambda x, t: weight * x, x_T, sampler, 5, grad_steps)
    assert out.requires_grad == (grad_steps != 0)
    if out.requires_grad:
        out.sum().backward()
        assert (x_T.grad is not None) == x_T_gets_gradient
        assert weight.grad is not None and weight.grad != 0


def test_causal_blocks_follow_the_graph(causal, test_batch):
    x, pa = test_batch["x"], test_batch["pa"]
    latent_scm = causal.mechanism.latent_scm
    noise = causal.abduct(x, pa, steps=1, inversion_iters=0)  # only the latent matters here
    blocks, _ = latent_scm.split(noise.image.latent)
    rest = noise.image.block_rest
    assert set(blocks) == {"thickness", "intensity", "digit"}

    # do(intensity): only the intensity block moves, by the change of its value's embedding
    target = causal.scm.act(pa, {"intensity": 200.0}, noise.attributes)
    new = latent_scm.act(blocks, rest, target, frozenset({"intensity"}))
    assert torch.equal(new["thickness"], blocks["thickness"])
    assert torch.equal(new["digit"], blocks["digit"])
    shift = latent_scm.embedding("intensity", target["intensity"]) - latent_scm.embedding(
        "intensity", pa["intensity"]
    )
    assert torch.allclose(new["intensity"], blocks["intensity"] + shift, atol=1e-6)
    assert shift.abs().max() > 1e-4

    # do(thickness): intensity is recomputed by the SCM, so its block follows the block mechanism
    target = causal.scm.act(pa, {"thickness": lambda t: t + 1}, noise.attributes)
    new = latent_scm.act(blocks, rest, target, frozenset({"thickness"}))
    residual = blocks["intensity"] - latent_scm.mechanism("intensity", blocks)
    assert torch.allclose(
        new["intensity"], latent_scm.mechanism("intensity", new) + residual, atol=1e-6
    )
    assert not torch.allclose(new["intensity"], blocks["intensity"])
    assert torch.equal(new["digit"], blocks["digit"])

    # the null intervention intervenes on nothing and keeps every block
    assert all(
        torch.equal(latent_scm.act(blocks, rest, pa, frozenset())[k], blocks[k]) for k in blocks
    )


def test_causal_do_reaches_the_latent_scm_without_guessing(causal, test_batch, monkeypatch):
    """``counterfactual`` tells prediction what ``do`` set: a descendant that the attribute SCM
    recomputed (intensity under do(thickness)) is never treated as intervened, even where its
    recomputed value breaks its own mechanism (as a far-off value would)."""
    x, pa = test_batch["x"], test_batch["pa"]
    latent_scm = causal.mechanism.latent_scm
    seen = []
    act = latent_scm.act

    def recording(blocks, rest, target, intervened):
        seen.append(intervened)
        return act(blocks, rest, target, intervened)

    monkeypatch.setattr(latent_scm, "act", recording)
    cf = causal.counterfactual(x, pa, {"thickness": lambda t: t + 1})
    assert seen == [frozenset({"thickness"})]
    assert set(cf.noise.attributes) == {"intensity"}  # recomputed, from its abducted noise
    assert not torch.equal(cf.parents["intensity"], pa["intensity"])
    # an intervention on both names both, whatever their values
    causal.counterfactual(x, pa, {"thickness": pa["thickness"], "intensity": 200.0})
    assert seen[-1] == frozenset({"thickness", "intensity"})
    # the counterfactual's image is the one the latent SCM's answer decodes to
    monkeypatch.setattr(latent_scm, "act", act)
    noise = causal.abduct(x, pa)
    full = causal.mechanism.predict(
        noise.image, cf.parents, frozenset({"thickness"}), **causal.option_defaults()
    )
    assert torch.allclose(cf.image, full, atol=1e-5)


def test_causal_training_supervises_the_blocks(causal, test_batch):
    causal.train()
    try:
        _, logs = causal.mechanism.loss(test_batch["x"], test_batch["pa"])
    finally:
        causal.eval()
    assert {"head_thickness", "head_intensity", "head_digit", "mechanism_intensity"} <= set(logs)
    assert "mechanism_thickness" not in logs  # a root's block is its own noise
