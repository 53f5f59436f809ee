"""The counterfactual contract, run for every model family."""

import pytest
import torch

from models import load_model
from tests.families import FAMILIES, fit_briefly, sampler_of
from tests.helpers import save_checkpoint


def test_shapes(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    cf = model.counterfactual(x, pa, {"thickness": 3.0})
    assert cf.image.shape == x.shape
    assert cf.image.min() >= 0 and cf.image.max() <= 1
    assert set(cf.parents) == {"thickness", "intensity", "digit"}
    assert all(v.shape == (len(x),) for v in cf.parents.values())
    assert torch.equal(cf.factual_image, x)


def test_null_intervention_reproduces_the_input(family, test_batch):
    _, model, bound = family
    cf = model.counterfactual(test_batch["x"], test_batch["pa"], {})
    assert (cf.image - test_batch["x"]).abs().max() < bound
    for name, value in test_batch["pa"].items():
        assert torch.equal(cf.parents[name], value)


def test_do_intensity_leaves_thickness_exactly_unchanged(family, test_batch):
    _, model, _ = family
    cf = model.counterfactual(test_batch["x"], test_batch["pa"], {"intensity": 200.0})
    assert torch.equal(cf.parents["thickness"], test_batch["pa"]["thickness"])
    assert torch.all(cf.parents["intensity"] == 200.0)
    assert not torch.allclose(cf.image, test_batch["x"], atol=1e-3)


def test_do_thickness_moves_intensity_as_the_mechanism_says(family, test_batch):
    _, model, _ = family
    pa = test_batch["pa"]
    new_thickness = pa["thickness"] + 1.0
    cf = model.counterfactual(test_batch["x"], pa, {"thickness": new_thickness})
    with torch.no_grad():
        noise = model.scm.abduct(pa)
        expected = (
            model.scm.mechanisms["intensity"]
            .predict(noise["intensity"], {**pa, "thickness": new_thickness})
            .clamp(64, 255)
        )
    assert torch.allclose(cf.parents["intensity"], expected, atol=1e-3)
    assert (cf.parents["intensity"] - pa["intensity"]).abs().mean() > 0.01
    assert torch.equal(cf.parents["digit"], pa["digit"])


def test_attribute_flows_invert_exactly(family, test_batch):
    _, model, _ = family
    pa = test_batch["pa"]
    with torch.no_grad():
        rebuilt = model.scm.predict(model.scm.abduct(pa))
    for name in ("thickness", "intensity"):
        variable = model.graph[name]
        error = (variable.normalise(rebuilt[name]) - variable.normalise(pa[name])).abs().max()
        assert error < 1e-4, name
    assert torch.equal(rebuilt["digit"], pa["digit"])


def test_save_load_gives_identical_counterfactuals(family, test_batch, tmp_path):
    _, model, _ = family
    loaded = load_model(save_checkpoint(model, tmp_path / "model.ckpt"))
    do = {"thickness": lambda t: t + 1, "digit": 3}
    torch.manual_seed(1)
    before = model.counterfactual(test_batch["x"], test_batch["pa"], do)
    torch.manual_seed(1)
    after = loaded.counterfactual(test_batch["x"], test_batch["pa"], do)
    assert torch.equal(before.image, after.image)
    assert all(torch.equal(before.parents[k], after.parents[k]) for k in before.parents)


def test_bad_queries_raise_clear_errors(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    with pytest.raises(ValueError, match="unknown variable 'slant'"):
        model.counterfactual(x, pa, {"slant": 1.0})
    with pytest.raises(ValueError, match=r"'thickness' is outside its support \[0.5, 10\]"):
        model.counterfactual(x, pa, {"thickness": 20.0})
    with pytest.raises(ValueError, match="shape"):
        model.counterfactual(x, pa, {"intensity": torch.full((3,), 100.0)})
    with pytest.raises(ValueError, match=r"shape \(B, 1, 32, 32\)"):
        model.counterfactual(x[:, :, :16, :16], pa, {})
    with pytest.raises(ValueError, match="lacks attribute"):
        model.counterfactual(x, {"thickness": pa["thickness"]}, {})
    with pytest.raises(ValueError, match="no counterfactual option"):
        model.counterfactual(x, pa, {}, no_such_option=3)


def test_bad_images_are_refused_with_the_fix(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    with pytest.raises(ValueError, match=r"floating point.*x.float\(\) / 255"):
        model.counterfactual((x * 255).to(torch.uint8), pa, {})
    with pytest.raises(ValueError, match=r"in \[0, 1\].*x / 255"):
        model.counterfactual(x * 255, pa, {})
    with pytest.raises(ValueError, match=r"in \[0, 1\], got pixels from -0.5"):
        model.counterfactual(x - 0.5, pa, {})
    broken = x.clone()
    broken[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"images \[2\] hold NaN"):
        model.counterfactual(broken, pa, {})


def test_bad_options_and_interventions_name_what_is_wrong(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    for do in ["thickness=3", None, ["thickness"]]:
        with pytest.raises(ValueError, match="do must map variable names to values"):
            model.counterfactual(x, pa, do)
    with pytest.raises(ValueError, match=r"do\(thickness=...\) must be a number"):
        model.counterfactual(x, pa, {"thickness": "thick"})
    defaults = model.option_defaults()
    for name, default in defaults.items():
        bad = (
            "no"
            if isinstance(default, bool)
            else (float("nan") if isinstance(default, float) else -1)
        )
        with pytest.raises(ValueError, match=f"option {name} must be"):
            model.counterfactual(x, pa, {}, **{name: bad})
    if "temperature" in defaults:
        with pytest.raises(ValueError, match="option temperature must be"):
            model.counterfactual(x, pa, {}, temperature=-1.0)


def test_an_in_place_soft_intervention_leaves_the_callers_attributes_alone(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    before = {k: v.clone() for k, v in pa.items()}
    torch.manual_seed(0)
    in_place = model.counterfactual(x, pa, {"thickness": lambda t: t.add_(1)})
    assert all(torch.equal(pa[k], before[k]) for k in pa)
    torch.manual_seed(0)
    pure = model.counterfactual(x, pa, {"thickness": lambda t: t + 1})
    assert torch.equal(in_place.parents["intensity"], pure.parents["intensity"])
    assert torch.allclose(in_place.image, pure.image)


def test_null_intervention_without_the_residual_is_bounded_by_the_reconstruction(
    family, morpho, test_batch
):
    """With the residual on, the null intervention is exact by construction; off, it is the
    decoder's reconstruction, which even 15 steps of training must have improved on by a fifth."""
    name, model, _ = family
    if "residual" not in model.options:
        pytest.skip(f"{name} has no pixel residual: its null intervention is tested above")
    x, pa = test_batch["x"], test_batch["pa"]
    torch.manual_seed(0)
    untrained = FAMILIES[name][0](morpho).eval()
    alone = (model.counterfactual(x, pa, {}, residual=False).image - x).abs().mean()
    initial = (untrained.counterfactual(x, pa, {}, residual=False).image - x).abs().mean()
    assert alone < 0.8 * initial, (float(alone), float(initial))
    # and it is the decoder's output under the abducted latents: not the input copied
    assert alone > 1e-3


def test_checkpoints_from_before_the_mechanism_split_load(family, test_batch, tmp_path):
    """A checkpoint whose networks sat on the module itself (``encoder.*``, ``flow.*``) and whose
    HVAE fine-tuning target was ``elbo_target`` loads through the migration, to the same answers."""
    _, model, _ = family
    path = save_checkpoint(model, tmp_path / "new.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["cfzoo_format"]
    del checkpoint["cfzoo_state_sha256"]  # format 1 had no checksum of its weights
    old = {}
    for key, value in checkpoint["state_dict"].items():
        if key == "loss_target":
            key = "elbo_target"
        elif key == "lagrange":
            continue
        elif key.startswith("net.") and type(model).__name__ in (
            "ConditionalVAE",
            "ConditionalFlow",
        ):
            key = key[len("net.") :]
        old[key] = value
    checkpoint["state_dict"] = old
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt")
    x, pa = test_batch["x"][:4], {k: v[:4] for k, v in test_batch["pa"].items()}
    do = {"thickness": lambda t: t + 1}
    options = {"steps": 2, "inversion_iters": 0} if "steps" in model.options else {}
    assert torch.equal(
        model.counterfactual(x, pa, do, **options).image,
        loaded.counterfactual(x, pa, do, **options).image,
    )


def test_a_briefly_trained_vae_beats_the_identity_on_the_truth_and_on_morphometry(morpho):
    """300 steps of the tiny VAE: its do(thickness) is closer to the true counterfactual and
    measures nearer its intended thickness than the unchanged image; its decoder alone
    reconstructs better than the all-black image."""
    from metrics.soundness import l1
    from models.baselines import IdentityModel

    torch.manual_seed(0)
    model = FAMILIES["vae"][0](morpho)
    model.log_dict = lambda *args, **kwargs: None
    fit_briefly(model, morpho, steps=300)
    batch = next(iter(morpho.test_dataloader()))
    x, pa = batch["x"], batch["pa"]
    do = {"thickness": torch.where(pa["thickness"] < 2.5, 4.5, 1.5)}
    truth, _ = morpho.true_counterfactual(batch["index"], do)

    def errors(candidate) -> tuple[float, float]:
        cf = candidate.counterfactual(x, pa, do)
        measured = morpho.measure_attributes(cf.image)["thickness"]
        return float(l1(cf.image, truth).mean()), float((measured - do["thickness"]).abs().mean())

    learned, identity = errors(model), errors(IdentityModel(morpho))
    assert learned[0] < 0.8 * identity[0], (learned, identity)
    assert learned[1] < 0.6 * identity[1], (learned, identity)
    alone = (model.counterfactual(x, pa, {}, residual=False).image - x).abs().mean()
    assert alone < 0.85 * x.mean()


def _fast(name: str) -> dict:
    return {"steps": 2} if name.endswith("diffae") else {}


def test_every_family_samples_observationally_and_under_do(family, test_batch, morpho):
    name, model, _ = family
    if not model.mechanism.can_sample:
        with pytest.raises(NotImplementedError, match="semantic bottleneck"):
            model.sample(2, **_fast(name))
    model = sampler_of(name, model, morpho)
    torch.manual_seed(0)
    drawn = model.sample(6, **_fast(name))
    assert drawn.image.shape == (6, *model.image_shape) and drawn.do == {}
    assert drawn.image.min() >= 0 and drawn.image.max() <= 1
    for variable in model.graph.variables:  # the attributes are the SCM's draws, in support
        assert variable.check(drawn.parents[variable.name], what="sample") is not None
    torch.manual_seed(0)
    again = model.sample(6, **_fast(name))
    assert torch.equal(again.image, drawn.image)  # reproducible under torch's seed
    # rung 2: do(thickness) sets it and recomputes its descendant intensity from the same noise
    torch.manual_seed(0)
    intervened = model.sample(6, do={"thickness": 4.0}, **_fast(name))
    assert torch.all(intervened.parents["thickness"] == 4.0)
    assert torch.equal(intervened.parents["digit"], drawn.parents["digit"])
    moved = intervened.parents["intensity"] != drawn.parents["intensity"]
    assert moved.any()  # 4 px is thicker than most draws: the intensity mechanism responds
    # images of given attributes
    given = model.sample(pa=test_batch["pa"], **_fast(name))
    assert torch.equal(given.parents["digit"], test_batch["pa"]["digit"])


def test_sampling_errors_name_what_is_wrong(family, test_batch, morpho):
    name, model, _ = family
    model = sampler_of(name, model, morpho)
    with pytest.raises(ValueError, match="n >= 1"):
        model.sample(0)
    with pytest.raises(ValueError, match="n=3 and pa of"):
        model.sample(3, pa=test_batch["pa"])
    with pytest.raises(ValueError, match="unknown"):
        model.sample(2, do={"colour": 1.0})


def test_reference_models_cannot_sample_and_say_so(morpho):
    from models.baselines import IdentityModel, OracleModel

    for model in (OracleModel(morpho), IdentityModel(morpho)):
        with pytest.raises(NotImplementedError, match="can't sample images"):
            model.sample(2)


def test_a_briefly_trained_vae_samples_the_thickness_it_is_asked_for(morpho):
    """Rung 2 against the model-free judge: do(thickness) samples of a 300-step VAE on 300
    digits measure near 1.5 px when asked for 1.5 and clearly thicker when asked for 4.5 (medians
    measured 1.56 and 2.42: the tiny decoder under-draws thick strokes)."""
    torch.manual_seed(0)
    model = FAMILIES["vae"][0](morpho)
    model.log_dict = lambda *args, **kwargs: None
    fit_briefly(model, morpho, steps=300)
    measured = {}
    for thickness in (1.5, 4.5):
        drawn = model.sample(200, do={"thickness": thickness})
        measured[thickness] = morpho.measure_attributes(drawn.image)["thickness"]
    thin, thick = measured[1.5].median(), measured[4.5].median()
    assert abs(thin - 1.5) < 0.4, (thin, thick)
    assert thick - thin > 0.6, (thin, thick)
