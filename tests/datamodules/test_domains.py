"""Multi-domain Morpho-MNIST: do(domain) renders the right transformation of the same digit."""

import numpy as np
import pytest
import torch

from datamodules.domains import DOMAINS, TEXTURE_PEAK, apply_domains, texture


def test_the_null_intervention_is_exact(domains):
    batch = domains.test_set.batch(range(40))
    truth, attributes = domains.true_counterfactual(batch["index"], {})
    assert torch.equal(truth, batch["x"])
    assert all(torch.equal(attributes[k], batch["pa"][k]) for k in batch["pa"])


def test_every_domain_occurs(domains):
    counts = np.bincount(domains.load()["domain"], minlength=len(DOMAINS))
    assert (counts > 0.25 * counts.sum()).all(), counts


@pytest.mark.parametrize("target", DOMAINS)
def test_do_domain_renders_that_domains_transformation_of_the_same_digit(domains, target):
    batch = domains.test_set.batch(range(40))
    plain, _ = domains.true_counterfactual(batch["index"], {"domain": 0})
    moved, attributes = domains.true_counterfactual(
        batch["index"], {"domain": DOMAINS.index(target)}
    )
    assert (attributes["domain"] == DOMAINS.index(target)).all()
    assert torch.equal(attributes["thickness"], batch["pa"]["thickness"])
    if target == "plain":  # the stored digit before its domain's transformation
        rows = batch["index"].numpy()
        stored = torch.from_numpy(domains.load()["plain_images"][rows][:, None]) / 255.0
        assert torch.equal(plain, stored)
        return
    expected = {
        "rotated": torch.rot90(plain, 1, dims=(2, 3)),
        "textured": torch.maximum(plain, torch.from_numpy(texture()).float() / 255.0),
    }[target]
    assert torch.equal(moved, expected)


def test_domain_and_thickness_together_render_both(domains):
    batch = domains.test_set.batch(range(8))
    both, attributes = domains.true_counterfactual(
        batch["index"], {"thickness": lambda t: t + 1, "domain": 1}
    )
    thick, _ = domains.true_counterfactual(
        batch["index"], {"thickness": lambda t: t + 1, "domain": 0}
    )
    assert torch.equal(both, torch.rot90(thick, 1, dims=(2, 3)))
    # intensity follows thickness by the true law with each sample's own noise
    assert (attributes["intensity"] != batch["pa"]["intensity"]).all()


def test_the_texture_is_fixed_faint_and_dense():
    pattern = texture()
    assert np.array_equal(pattern, texture())
    assert pattern.max() <= TEXTURE_PEAK
    assert (pattern > 0).mean() > 0.95  # every pixel's mechanism changes: a dense shift
    blank = np.zeros((2, 32, 32), np.uint8)
    assert np.array_equal(apply_domains(blank, np.array([2, 0]))[0], pattern)


def test_do_digit_has_no_truth_here_either(domains):
    batch = domains.test_set.batch(range(4))
    with pytest.raises(ValueError, match="do\\(digit=...\\) has no ground truth"):
        domains.true_counterfactual(batch["index"], {"digit": 3})
