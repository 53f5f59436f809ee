"""The invertible latent domain model: an exact shared bijection, and do(domain) that moves only
the intervention set."""

import pytest
import torch
from torch.distributions import Normal

from metrics.soundness import l1, reversibility
from models import load_model
from models.ild import InvertibleLatentDomain
from tests.families import fit_briefly, tiny_ild, tiny_ild_vae
from tests.helpers import save_checkpoint


@pytest.fixture(scope="module")
def ild(domains):
    torch.manual_seed(0)
    model = tiny_ild(domains)
    model.log_dict = lambda *args, **kwargs: None
    fit_briefly(model, domains, steps=30)
    return model


@pytest.fixture(scope="module")
def batch(domains):
    return domains.test_set.batch(range(32))


def test_the_inverse_map_round_trips_to_float_error(ild, batch):
    assert ild.check_invertibility(batch["x"], batch["pa"]) < 1e-8  # float64
    assert ild.check_invertibility(batch["x"], batch["pa"], dtype=torch.float32) < 1e-4


def test_do_domain_changes_only_the_intervention_set(ild, batch):
    x, pa = batch["x"], batch["pa"]
    k = ild.hparams.intervention_dims
    cf = ild.counterfactual(x, pa, {"domain": lambda d: (d + 1) % 3})
    with torch.no_grad():
        before = ild.mechanism.latent(x, pa)
        after = ild.mechanism.latent(cf.unclipped.float(), cf.parents)
    shared = (after[:, :-k] - before[:, :-k]).abs().max()
    moved = (after[:, -k:] - before[:, -k:]).abs().max()
    assert shared < 1e-3, float(shared)  # float32 rounding of the flow's two passes
    assert moved > 100 * shared, (float(moved), float(shared))
    assert torch.equal(cf.parents["thickness"], pa["thickness"])


def test_the_domain_never_reaches_the_shared_map(ild, batch):
    """g is one map for all domains: its context leaves the domain out."""
    names = [v.name for v in ild.net.parents.variables]
    assert "domain" not in names and set(names) == {"thickness", "intensity", "digit"}


@pytest.mark.parametrize("do", [{"domain": 1}, {"thickness": 4.0}], ids=["domain", "thickness"])
def test_round_trips_are_exact(ild, batch, do):
    assert reversibility(ild, batch["x"], batch["pa"], do, 2).max() < 0.01


def test_training_lowers_the_domain_counterfactuals_error(domains, batch):
    """60 steps: do(domain)'s error against the true domain counterfactual falls below the
    untrained model's (which, with identity domain mechanisms, leaves the image as it was)."""
    torch.manual_seed(0)
    model = tiny_ild(domains)
    model.log_dict = lambda *args, **kwargs: None
    do = {"domain": lambda d: (d + 1) % 3}
    truth, _ = domains.true_counterfactual(batch["index"], do)
    before = l1(model.eval().counterfactual(batch["x"], batch["pa"], do).image, truth).mean()
    fit_briefly(model, domains, steps=60)
    after = l1(model.counterfactual(batch["x"], batch["pa"], do).image, truth).mean()
    assert after < before, (float(after), float(before))


def test_save_load_round_trip(ild, batch, tmp_path):
    loaded = load_model(save_checkpoint(ild, tmp_path / "ild.ckpt"))
    assert isinstance(loaded, InvertibleLatentDomain) and loaded.hparams.intervention_dims == 8
    do = {"domain": 2}
    x, pa = batch["x"], batch["pa"]
    assert torch.equal(ild.counterfactual(x, pa, do).image, loaded.counterfactual(x, pa, do).image)


def test_bad_settings_are_clear_errors(domains, morpho):
    with pytest.raises(ValueError, match="intervention_dims must be between 1 and the latent"):
        tiny_ild(domains, intervention_dims=0)
    with pytest.raises(ValueError, match="domain_weight must be a finite number >= 0"):
        tiny_ild(domains, domain_weight=-1.0)
    with pytest.raises(ValueError, match="ILD needs a categorical domain variable"):
        tiny_ild(morpho, domain="thickness")
    with pytest.raises(ValueError, match="ILD needs a categorical domain variable"):
        tiny_ild(morpho, domain="scanner")


def test_the_domain_posterior_term_teaches_the_latent_the_domain(domains, batch):
    """With domain_weight, the model's own Bayes classifier over domains (its latent SCM's
    densities, no network of its own) leaves chance within 60 steps; without, it stays near it."""
    accuracy = {}
    for weight in (0.0, 1000.0):
        torch.manual_seed(0)
        model = tiny_ild(domains, domain_weight=weight)
        model.log_dict = lambda *args, **kwargs: None
        fit_briefly(model, domains, steps=60)
        with torch.no_grad():
            scores = model.net.domain_scores(model.net.latent(batch["x"], batch["pa"]))
        accuracy[weight] = (scores.argmax(1) == batch["pa"]["domain"]).float().mean().item()
        _, logs = model.net.loss(batch["x"], batch["pa"])
        assert ("domain_ce" in logs) == (weight > 0)
    assert accuracy[1000.0] > 0.8 and accuracy[1000.0] > accuracy[0.0] + 0.2, accuracy


def test_checkpoints_from_before_domain_weight_load_as_trained(ild, batch, tmp_path):
    path = save_checkpoint(ild, tmp_path / "ild.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["domain_weight"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert load_model(tmp_path / "old.ckpt").hparams.domain_weight == 0.0


# -- ILD with the pseudo-invertible map (LatentDomainVAE) -------------------------------------


@pytest.fixture(scope="module")
def ild_vae(domains):
    torch.manual_seed(0)
    model = tiny_ild_vae(domains)
    model.log_dict = lambda *args, **kwargs: None
    fit_briefly(model, domains, steps=30)
    return model.eval()


def test_the_elbo_divides_by_the_domain_prior(ild_vae, batch):
    """The KL in closed form, given the sampled z_S, has the expectation of a Monte Carlo
    estimate of ``log q(z | x) - log p_d(z)`` under the latent SCM's density."""
    mechanism = ild_vae.net
    mechanisms = mechanism.mechanisms
    torch.manual_seed(0)
    for layer in (mechanisms.net[-1].weight, mechanisms.net[-1].bias):
        torch.nn.init.normal_(layer, std=0.5)  # a prior far from N(0, I)
    n, dims = 20000, mechanism.latent_dim
    mean = torch.randn(1, dims).expand(n, dims)
    log_sd = (0.3 * torch.randn(1, dims) - 0.5).expand(n, dims)
    domain = torch.full((n,), 2)
    with torch.no_grad():
        z = mean + log_sd.exp() * torch.randn(n, dims)
        closed = mechanism.kl(mean, log_sd, z, {"domain": domain}).mean()
        e, logdet = mechanisms.to_noise(z, domain)
        log_p = Normal(0.0, 1.0).log_prob(e).sum(1) + logdet
        log_q = Normal(mean, log_sd.exp()).log_prob(z).sum(1)
        sampled = (log_q - log_p).mean()
    assert abs(closed - sampled) < 0.02 * closed + 0.05, (float(closed), float(sampled))


def test_ild_vae_do_domain_moves_only_the_intervention_set(ild_vae, batch):
    x, pa = batch["x"], batch["pa"]
    k = ild_vae.hparams.intervention_dims
    target = (pa["domain"] + 1) % 3
    mechanism = ild_vae.mechanism
    with torch.no_grad():
        z = mechanism.latent(x, pa)
        noise = mechanism.abduct(x, pa, temperature=0.0, residual=False)
        moved = mechanism.mechanisms.from_noise(noise.e, target)
        expected = mechanism.decode(moved, pa).image({}, residual=False)
    assert torch.allclose(moved[:, :-k], z[:, :-k], atol=0)  # e_S = z_S, carried unchanged
    assert (moved[:, -k:] - z[:, -k:]).abs().max() > 1e-3
    cf = ild_vae.counterfactual(x, pa, {"domain": target}, residual=False)
    assert torch.allclose(cf.image, expected, atol=1e-6)
    assert torch.equal(cf.parents["thickness"], pa["thickness"])


def test_ild_vae_g_is_shared_by_every_domain(ild_vae):
    """Neither the encoder nor the decoder sees the domain: only the latent SCM does."""
    names = [v.name for v in ild_vae.net.parents.variables]
    assert "domain" not in names and set(names) == {"thickness", "intensity", "digit"}


def test_ild_vae_null_intervention_is_exact_with_the_residual(ild_vae, batch):
    cf = ild_vae.counterfactual(batch["x"], batch["pa"], {})
    assert (cf.image - batch["x"]).abs().max() < 1e-5


def test_ild_vae_residual_stays_in_its_domain(ild_vae, batch):
    """do(domain=1) on a batch of every domain: the images that move are g(z') alone, as with
    the residual off; those already in domain 1 keep theirs, so they come back as they were."""
    x, pa = batch["x"], batch["pa"]
    do = {"domain": torch.ones_like(pa["domain"])}
    stays = pa["domain"] == 1
    assert 0 < int(stays.sum()) < len(stays)
    kept = ild_vae.counterfactual(x, pa, do)
    alone = ild_vae.counterfactual(x, pa, do, residual=False)
    assert torch.equal(kept.image[~stays], alone.image[~stays])
    assert (kept.image[stays] - x[stays]).abs().max() < 1e-5
    assert (alone.image[stays] - x[stays]).abs().max() > 0.05  # the residual did matter
    thicker = ild_vae.counterfactual(x, pa, {"thickness": pa["thickness"] + 0.5})
    gone = ild_vae.counterfactual(x, pa, {"thickness": pa["thickness"] + 0.5}, residual=False)
    assert (thicker.image - gone.image).abs().max() > 0.05  # other interventions keep it


def test_the_independence_term_measures_how_much_the_noise_knows_the_domain(domains, batch):
    """0 (up to sampling error) for noise drawn apart from the domain; large when one domain's
    noise is shifted; and it enters the loss with its weight."""
    model = tiny_ild_vae(domains, independence_weight=1000.0)
    mechanism = model.net
    torch.manual_seed(0)
    domain = torch.arange(300) % 3
    z = torch.randn(300, mechanism.latent_dim)
    with torch.no_grad():  # identity domain mechanisms at initialisation: e = z
        independent = mechanism.noise_dependence(z, domain)
        shifted = mechanism.noise_dependence(z + (domain == 1).float()[:, None], domain)
    assert abs(float(independent)) < 0.01 and float(shifted) > 0.1, (independent, shifted)
    _, logs = mechanism.loss(batch["x"], batch["pa"])
    assert "noise_mmd" in logs
    _, logs = tiny_ild_vae(domains, independence_weight=0.0).net.loss(batch["x"], batch["pa"])
    assert "noise_mmd" not in logs


def test_ild_vae_bad_settings_are_clear_errors(domains, morpho):
    with pytest.raises(
        ValueError, match="intervention_dims must be between 1 and the latent size 6"
    ):
        tiny_ild_vae(domains, intervention_dims=7)
    with pytest.raises(ValueError, match="ILD needs a categorical domain variable"):
        tiny_ild_vae(morpho, domain="intensity")
    with pytest.raises(ValueError, match="independence_weight must be a finite number >= 0"):
        tiny_ild_vae(domains, independence_weight=float("nan"))
