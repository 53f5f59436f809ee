import math

import torch

from models.nn.likelihoods import DiscretizedGaussian


def test_residual_off_returns_the_decoder_mean(morpho, test_batch):
    from tests.families import FAMILIES

    model = FAMILIES["vae"][0](morpho).eval()
    cf = model.counterfactual(test_batch["x"], test_batch["pa"], {}, residual=False)
    with torch.no_grad():
        mean, _ = model.net.encode(test_batch["x"], test_batch["pa"])
        decoded = (model.net.decode(mean, test_batch["pa"]).expected + 1) / 2
    assert torch.allclose(cf.image, decoded, atol=1e-6)


def test_temperature_samples_the_posterior(morpho, test_batch):
    from tests.families import FAMILIES

    model = FAMILIES["vae"][0](morpho).eval()
    x, pa = test_batch["x"], test_batch["pa"]
    cold = model.abduct(x, pa, temperature=0.0)
    warm = model.abduct(x, pa, temperature=1.0)
    mean, _ = model.net.encode(x, pa)
    assert torch.equal(cold.image.z, mean)
    assert not torch.allclose(warm.image.z, mean)


def test_discretized_gaussian_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256).view(256, 1, 1, 1)
    for mean, log_scale in [(0.3, -3.0), (-0.9, -1.0), (0.0, -6.0)]:
        dist = DiscretizedGaussian(
            torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        total = dist.log_prob(levels).exp().sum()
        assert abs(total.item() - 1.0) < 1e-3
    dist = DiscretizedGaussian(torch.zeros(2), torch.full((2,), -2.0))
    y = torch.tensor([0.5, -0.25])
    assert torch.allclose(dist.sample_from_noise(dist.noise(y)), y)


def test_pixel_residual_fades_where_the_counterfactual_is_more_confident():
    factual = DiscretizedGaussian(torch.zeros(3), torch.log(torch.tensor([0.2, 0.2, 0.2])))
    y = torch.tensor([0.3, -0.3, -0.1])
    noise = factual.noise(y)  # residuals 0.3, -0.3, -0.1 about the mean 0
    assert torch.equal(factual.sample_from_noise(noise), y)  # the null intervention
    # same mean; the counterfactual halves the scale at pixel 0, keeps it at 1, doubles it at 2:
    # location-scale counterfactual mu' + sigma' u, its amplification capped at 1
    rescaled = DiscretizedGaussian(torch.zeros(3), torch.log(torch.tensor([0.1, 0.2, 0.4])))
    assert torch.allclose(rescaled.sample_from_noise(noise), torch.tensor([0.15, -0.3, -0.1]))
    # same scale; the clipped mean moves by 0, 0.5 and 1 (2.0 clips to 1): the residual keeps
    # exp(-shift^2 / (16 * (0.2^2 + 0.2^2))) of itself
    moved = DiscretizedGaussian(torch.tensor([0.0, 0.5, 2.0]), torch.full((3,), math.log(0.2)))
    kept = torch.exp(-torch.tensor([0.0, 0.25, 1.0]) / (16 * 0.08))
    expected = torch.tensor([0.0, 0.5, 1.0]) + noise["residual"] * kept
    assert torch.allclose(moved.sample_from_noise(noise), expected)
    assert 0.45 < kept[2] < 0.46  # a whole-range move keeps under half the residual
    # noise from before either factor (the residual alone) stays additive
    assert torch.allclose(
        moved.sample_from_noise({"residual": noise["residual"]}),
        torch.tensor([0.3, 0.2, 0.9]),
    )
