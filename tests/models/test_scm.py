import numpy as np
import torch

from datamodules import ANALYTIC_MECHANISMS
from datamodules.base import CATEGORICAL, CONTINUOUS, CausalGraph, Variable
from models.scm import AttributeSCM


def test_gumbel_max_abduction_reproduces_the_observed_class():
    graph = CausalGraph(
        (
            Variable("a", CONTINUOUS, support=(-10.0, 10.0)),
            Variable("b", CATEGORICAL, parents=("a",), num_classes=5),
        ),
        image_parents=("a", "b"),
    )
    torch.manual_seed(0)
    scm = AttributeSCM(graph, hidden=16, transforms=2)
    pa = {"a": torch.randn(2000), "b": torch.randint(0, 5, (2000,))}
    with torch.no_grad():
        noise = scm.abduct(pa)
        assert torch.equal(scm.predict(noise)["b"], pa["b"])
        # Counterfactual of the categorical child under a new parent: a valid class, and the
        # posterior Gumbel noise is not the prior (its observed coordinate is the max).
        cf = scm.act(pa, {"a": pa["a"] + 3.0}, noise)
    assert cf["b"].min() >= 0 and cf["b"].max() < 5
    logits = scm.mechanisms["b"].logits(pa, 2000)
    assert torch.equal((logits + noise["b"]).argmax(-1), pa["b"])


def test_gumbel_counterfactuals_keep_the_class_when_logits_do_not_change():
    graph = CausalGraph((Variable("b", CATEGORICAL, num_classes=4),), image_parents=("b",))
    scm = AttributeSCM(graph)
    pa = {"b": torch.randint(0, 4, (500,))}
    noise = scm.abduct(pa)
    assert torch.equal(scm.predict(noise)["b"], pa["b"])


def test_analytic_scm_matches_the_datasets_equations(morpho):
    scm = AttributeSCM(
        morpho.graph, mechanism="analytic", analytic=ANALYTIC_MECHANISMS["morphomnist"]
    )
    index = torch.arange(0, 400, 7)
    pa = morpho.attributes(index)
    noise = scm.abduct(pa)
    stored = morpho.arrays["intensity_noise"][index.numpy()]
    assert np.allclose(noise["intensity"].numpy(), stored, atol=2e-3)
    # do(thickness) through the analytic SCM equals the oracle's counterfactual attributes
    do = {"thickness": lambda t: t + 0.7}
    _, truth = morpho.true_counterfactual(index, do)
    ours = scm.act(pa, do, noise)
    assert torch.allclose(ours["intensity"], truth["intensity"], atol=1e-2)
    assert torch.isfinite(torch.stack(list(scm.log_prob(pa).values()))).all()


def test_flow_scm_learns_the_intensity_mechanism(morpho):
    """A few hundred steps on the tiny dataset: the learned NLL approaches the true equations'."""
    torch.manual_seed(0)
    scm = AttributeSCM(morpho.graph, hidden=32, transforms=2)
    analytic = AttributeSCM(
        morpho.graph, mechanism="analytic", analytic=ANALYTIC_MECHANISMS["morphomnist"]
    )
    pa = morpho.attributes(morpho.train_set.indices)
    optimiser = torch.optim.Adam(scm.parameters(), lr=3e-3)
    for _ in range(300):
        loss = -(scm.log_prob(pa)["intensity"] + scm.log_prob(pa)["thickness"]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        learned = -(scm.log_prob(pa)["intensity"]).mean()
        truth = -(analytic.log_prob(pa)["intensity"]).mean()
    assert learned < truth + 0.3
