"""Counterfactual fine-tuning (Ribeiro et al. 2023), the task every family shares."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from datamodules import MorphoMNISTDataModule, datamodule_for
from metrics.soundness import composition
from models import load_model
from models.base import DATA_SPEC_KEY, MAX_VIOLATION, counterfactual, judge_loss
from tests.families import FAMILIES
from tests.helpers import quiet_trainer, save_checkpoint

FINETUNED = ("vae", "hvae", "flow")


def tiny(family: str, morpho, **overrides):
    model = FAMILIES[family][0](morpho)
    if overrides:
        model = type(model)(**{**model.hparams, **overrides})
    model.log_dict = lambda *args, **kwargs: None
    return model


def pretrained(family: str, morpho, path):
    """A stage-1 model to fine-tune: ``family`` trained for 20 steps from seed 0, saved at
    ``path``. Its attribute SCM trains jointly in those steps (``fit_steps=0``), as when this
    file's bounds were measured: fine-tuning keeps whatever SCM its base has, and the judge reads
    the descendants that SCM recomputes, so another SCM moves every figure here a little."""
    torch.manual_seed(0)
    base = tiny(family, morpho)
    base.scm.fit_steps = 0  # in place: a second construction would draw other initial weights
    base.scm.requires_grad_(True)
    quiet_trainer(max_steps=20, limit_val_batches=0).fit(
        base, train_dataloaders=morpho.train_dataloader()
    )
    return save_checkpoint(base, path)


def judged_loss(model, judge, datamodule) -> float:
    """A judge's loss on the model's counterfactuals (its evaluated weights, default options) of
    fixed random single-attribute interventions on two validation batches."""
    model.eval()
    generator = torch.Generator().manual_seed(1)
    losses = []
    with torch.no_grad():
        for batch in itertools.islice(datamodule.val_dataloader(), 2):
            x, pa = batch["x"], batch["pa"]
            for name in model.graph.names:
                do = {name: pa[name][torch.randperm(len(x), generator=generator)]}
                cf = counterfactual(model.mechanism, model.scm, x, pa, do)
                losses.append(judge_loss(judge, cf.image, cf.parents))
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_the_judges_loss_trains_the_decoder_not_the_encoder(family, morpho, tiny_predictor):
    model = tiny(family, morpho)
    model.attach_judge(tiny_predictor, "tiny judge")
    batch = next(iter(morpho.train_dataloader()))
    model.counterfactual_loss(batch).backward()
    net = model.net
    if family == "vae":
        encoder, decoder = [net.encoder, net.posterior], [net.decoder]
    else:
        levels = [level for levels in net.decoder.values() for level in levels]
        encoder = [net.stem, net.encoder, *(level.posterior for level in levels)]
        decoder = [net.head, *(level.merge for level in levels)]
    assert all(p.grad is None for part in encoder for p in part.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for part in decoder for p in part.parameters()
    )
    assert all(p.grad is None for p in tiny_predictor.parameters())  # the judge stays frozen


def test_the_judges_loss_reaches_the_last_sampling_steps_only(morpho, tiny_predictor):
    """diffae: the judge's gradient trains the denoiser through the last ``grad_steps`` sampling
    steps and the first stage's decoder; abduction (both encoders) gets none."""
    model = tiny("diffae", morpho, steps=4, inversion_iters=0, grad_steps=2)
    model.attach_judge(tiny_predictor, "tiny judge")
    net = model.net
    calls = []
    unet_forward = net.unet.forward

    def recorded(*args, **kwargs):
        out = unet_forward(*args, **kwargs)
        calls.append(out.sample.requires_grad)
        return out

    net.unet.forward = recorded
    model.counterfactual_loss(next(iter(morpho.train_dataloader()))).backward()
    # 4 inversion calls without gradients, then 4 sampling calls: only the last 2 carry them
    assert calls == [False] * 6 + [True] * 2
    assert all(
        p.grad is None for part in (net.encoder, net.autoencoder.encoder) for p in part.parameters()
    )
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.unet.parameters())
    assert all(p.grad is not None for p in net.autoencoder.decoder.parameters())


def test_the_flows_abducted_noise_carries_no_gradient(morpho, test_batch):
    model = tiny("flow", morpho).train()
    x, pa = test_batch["x"], test_batch["pa"]
    cf = counterfactual(model.net, model.scm, x, pa, {"thickness": lambda t: t + 1})
    assert not cf.noise.image.u.requires_grad  # no gradient through the forward pass
    assert cf.image.requires_grad  # but through the inverse, which prediction runs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_public_counterfactual_is_the_core_function(family, morpho, test_batch):
    model = tiny(family, morpho).eval()
    x, pa = test_batch["x"][:4], {k: v[:4] for k, v in test_batch["pa"].items()}
    do = {"thickness": lambda t: t + 1, "digit": 3}
    options = {"steps": 2, "inversion_iters": 0} if "steps" in model.options else {}
    torch.manual_seed(3)
    public = model.counterfactual(x, pa, do, **options)
    torch.manual_seed(3)
    core = counterfactual(model.mechanism, model.scm, x, pa, do, **options)
    assert torch.equal(public.image, core.image)
    assert all(torch.equal(public.parents[k], core.parents[k]) for k in pa)


@pytest.mark.parametrize("family", FINETUNED)
def test_finetuning_lowers_a_held_out_judges_loss(
    family, morpho, tiny_predictor, held_out_judge, tmp_path
):
    stage1 = pretrained(family, morpho, tmp_path / "stage1.ckpt")
    settings = {"init_ckpt": str(stage1), "slack": 0.05, "lagrange_lr": 0.1}
    finetuned = tiny(family, morpho, lr=3e-3, cf_finetune=settings)
    finetuned.attach_judge(tiny_predictor, "tiny judge")
    quiet_trainer(max_steps=40, limit_val_batches=0).fit(finetuned, datamodule=morpho)

    before = judged_loss(load_model(stage1), held_out_judge, morpho)
    after = judged_loss(finetuned, held_out_judge, morpho)
    assert after < 0.95 * before, (before, after)
    assert torch.isfinite(finetuned.loss_target) and finetuned.lagrange >= 0

    batch = next(iter(morpho.val_dataloader()))
    if "residual" in finetuned.options:
        # The pixel residual makes the null intervention exact however the decoder moved, so the
        # decoder alone is what shows whether fine-tuning kept the reconstruction.
        x, pa = batch["x"], batch["pa"]
        alone = {"residual": False}
        before_alone = composition(load_model(stage1), x, pa, 2, **alone).mean(1)
        after_alone = composition(finetuned.eval(), x, pa, 2, **alone).mean(1)
        # issue 17's bound on the decoder alone: up by at most 10% (here, m = 2)
        assert float(after_alone[-1]) <= 1.10 * float(before_alone[-1]), (before_alone, after_alone)
        assert float(composition(finetuned, x, pa, 2, residual=True).max()) < 1e-3
    # The judge is not part of the checkpoint, but the record of it is.
    reloaded = load_model(save_checkpoint(finetuned, tmp_path / "stage2.ckpt"))
    assert not any(k.startswith("_judge") for k in reloaded.state_dict())
    assert reloaded.trained_against == "tiny judge"


def test_finetuning_needs_a_pretrained_model_and_a_judge(morpho, tiny_predictor, tmp_path):
    model = tiny("vae", morpho, cf_finetune={"init_ckpt": None})
    model.attach_judge(tiny_predictor, "tiny judge")
    with pytest.raises(ValueError, match="init_ckpt"):
        quiet_trainer(max_steps=1).fit(model, datamodule=morpho)
    stage1 = save_checkpoint(tiny("vae", morpho), tmp_path / "stage1.ckpt")
    model = tiny("vae", morpho, cf_finetune={"init_ckpt": str(stage1)})
    with pytest.raises(ValueError, match="needs a judge"):
        quiet_trainer(max_steps=1).fit(model, datamodule=morpho)
    other = tiny("flow", morpho, cf_finetune={"init_ckpt": str(stage1)})
    other.attach_judge(tiny_predictor, "tiny judge")
    with pytest.raises(ValueError, match="holds a ConditionalVAE, not a ConditionalFlow"):
        quiet_trainer(max_steps=1).fit(other, datamodule=morpho)
    with pytest.raises(ValueError, match="no setting"):
        tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "slak": 0.1})


def test_settings_of_checkpoints_from_before_the_shared_task_still_parse(morpho):
    model = tiny(
        "hvae", morpho, cf_finetune={"init_ckpt": "x", "elbo_slack": 0.01, "predictor_ckpt": "j"}
    )
    assert model.finetuning.slack == 0.01 and model.finetuning.judge_ckpt == "j"


def test_finetuning_intervenes_on_the_chosen_attributes_as_often_as_weighted(morpho):
    pa = next(iter(morpho.train_dataloader()))["pa"]
    every = tiny("vae", morpho, cf_finetune={"init_ckpt": "x"})
    assert every.finetuning_interventions() == {name: 1 / 3 for name in every.graph.names}
    weighted = tiny(
        "vae", morpho, cf_finetune={"init_ckpt": "x", "interventions": {"digit": 3, "thickness": 1}}
    )
    torch.manual_seed(0)
    drawn = [next(iter(weighted.finetuning_do(pa))) for _ in range(400)]
    assert set(drawn) == {"digit", "thickness"}
    assert abs(drawn.count("digit") / 400 - 0.75) < 0.07, drawn.count("digit")
    do = weighted.finetuning_do(pa)
    ((name, values),) = do.items()
    # the batch's own values, permuted: the intervention follows the attributes' marginal
    assert torch.equal(values.sort().values, pa[name].sort().values)
    listed = tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "interventions": ["digit"]})
    assert listed.finetuning_interventions() == {"digit": 1.0}


@pytest.mark.parametrize(
    "interventions, message",
    [
        (["colour"], r"names \['colour'\], which this model can't intervene on"),
        ("digit", "must be a list of attribute names"),
        ({"digit": -1}, "weights >= 0"),
        ({"digit": 0, "thickness": 0}, "not all 0"),
    ],
)
def test_bad_finetuning_interventions_are_named(morpho, interventions, message):
    settings = {"init_ckpt": "x", "interventions": interventions}
    with pytest.raises(ValueError, match=message):  # on building the model, or before training
        tiny("vae", morpho, cf_finetune=settings).finetuning_interventions()


def test_an_augmented_judge_reads_a_varied_counterfactual_and_still_trains_the_decoder(
    morpho, tiny_predictor
):
    batch = next(iter(morpho.train_dataloader()))
    model = tiny("vae", morpho, cf_finetune={"init_ckpt": "x"})
    model.attach_judge(tiny_predictor, "tiny judge")
    losses = {}
    for name in ("none", "affine"):
        model.finetuning = dataclasses.replace(model.finetuning, augment=name)
        model.zero_grad()
        torch.manual_seed(0)  # the same intervention for both
        loss = model.counterfactual_loss(batch)
        loss.backward()
        decoder = list(model.net.decoder.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder)
        losses[name] = float(loss)
    # the same weights and the same intervention: only the variation differs
    assert losses["none"] != pytest.approx(losses["affine"], rel=1e-4)


def test_the_fine_tuning_judges_settings_must_be_a_mapping(morpho):
    with pytest.raises(ValueError, match=r"judge must be a mapping of judge settings"):
        tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "judge": ["intensity"]})
    model = tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "judge": {"epochs": 3}})
    assert model.finetuning.judge == {"epochs": 3}


def test_an_unknown_finetuning_augmentation_is_named(morpho):
    with pytest.raises(ValueError, match=r"augment must be one of \('none', 'shift', 'affine'\)"):
        tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "augment": "blur"})


def test_one_exploding_batch_moves_the_multiplier_by_a_bounded_step(morpho, tiny_predictor):
    model = tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "lagrange_lr": 1.0})
    model.attach_judge(tiny_predictor, "tiny judge")
    model.loss_target.fill_(1.0)
    batch = next(iter(morpho.train_dataloader()))
    steps = []
    for loss in (1.0 + 6.7e6, float("nan"), 1.0 - 1e3, 1.05):
        before = float(model.lagrange)
        model.finetuning_loss(batch, torch.tensor(loss), {})
        steps.append(float(model.lagrange) - before)
    # an explosion (or a NaN) counts as MAX_VIOLATION; a collapse as -MAX_VIOLATION (floored at 0);
    # an ordinary violation as itself
    assert steps[:2] == [pytest.approx(MAX_VIOLATION), pytest.approx(MAX_VIOLATION)]
    assert steps[2] == pytest.approx(-MAX_VIOLATION)
    assert steps[3] == pytest.approx(0.05, abs=1e-6)


def test_the_anchor_keeps_the_counterfactuals_near_the_pretrained_models(
    morpho, tiny_predictor, tmp_path
):
    stage1 = pretrained("vae", morpho, tmp_path / "stage1.ckpt")
    batch = next(iter(morpho.val_dataloader()))
    x, pa = batch["x"], batch["pa"]
    do = {"thickness": pa["thickness"].flip(0)}
    reference = load_model(stage1).counterfactual(x, pa, do).image
    drift = {}
    for anchor in (0.0, 10.0):
        torch.manual_seed(0)
        settings = {"init_ckpt": str(stage1), "slack": 0.05, "lagrange_lr": 0.1, "anchor": anchor}
        model = tiny("vae", morpho, lr=3e-3, cf_finetune=settings)
        model.attach_judge(tiny_predictor, "tiny judge")
        quiet_trainer(max_steps=30, limit_val_batches=0).fit(model, datamodule=morpho)
        image = model.eval().counterfactual(x, pa, do).image
        drift[anchor] = float(255 * (image - reference).abs().mean())
    assert drift[10.0] < 0.5 * drift[0.0], drift
    # the pre-trained copy is neither trained nor saved
    assert all(not p.requires_grad for p in model._anchor.parameters())
    assert not any(k.startswith("_anchor") for k in model.state_dict())
    with pytest.raises(ValueError, match="anchor must be >= 0"):
        tiny("vae", morpho, cf_finetune={"init_ckpt": "x", "anchor": -1})


def test_an_anchor_per_attribute_weighs_only_the_steps_that_intervene_on_its_names(
    morpho, tiny_predictor, tmp_path
):
    stage1 = pretrained("vae", morpho, tmp_path / "stage1.ckpt")
    settings = {"init_ckpt": str(stage1), "anchor": {"thickness": 10.0, "digit": 0.0}}
    model = tiny("vae", morpho, lr=3e-3, cf_finetune=settings)
    model.attach_judge(tiny_predictor, "tiny judge")
    quiet_trainer(max_steps=5, limit_val_batches=0).fit(model, datamodule=morpho)
    batch = next(iter(morpho.train_dataloader()))
    drifts = {}
    for _ in range(30):
        _, name, drift = model._counterfactual_terms(batch, anchored=True)
        drifts.setdefault(name, []).append(drift)
    assert set(drifts) == {"thickness", "intensity", "digit"}, drifts.keys()
    assert all(d is not None and float(d.detach()) > 0 for d in drifts["thickness"])
    assert all(d is None for d in drifts["intensity"] + drifts["digit"])  # left out, or 0
    assert model.finetuning.anchor_weight("thickness") == 10.0


@pytest.mark.parametrize(
    ("anchor", "message"),
    [
        ({"thickness": -1}, "anchor must be >= 0"),
        ({"thickness": float("nan")}, "anchor must be >= 0"),
        ("strong", "anchor must be >= 0"),
        ({"colour": 0.3}, r"cf_finetune.anchor names \['colour'\]"),
    ],
)
def test_bad_anchors_are_named(morpho, tiny_predictor, tmp_path, anchor, message):
    with pytest.raises(ValueError, match=message):
        stage1 = save_checkpoint(tiny("vae", morpho), tmp_path / "stage1.ckpt")
        model = tiny("vae", morpho, cf_finetune={"init_ckpt": str(stage1), "anchor": anchor})
        model.attach_judge(tiny_predictor, "tiny judge")
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=morpho)


def test_a_stage_on_other_data_than_its_bases_is_refused(morpho, tiny_predictor, tmp_path):
    torch.manual_seed(0)
    base = tiny("vae", morpho)
    quiet_trainer(max_steps=2, limit_val_batches=0).fit(base, datamodule=morpho)
    path = save_checkpoint(base, tmp_path / "stage1.ckpt")
    checkpoint = torch.load(path, weights_only=True)  # plain values: loads without unpickling
    assert checkpoint[DATA_SPEC_KEY]["seed"] == 0 and checkpoint[DATA_SPEC_KEY]["dataset"]

    def fine_tune(init_ckpt):
        model = tiny("vae", morpho, cf_finetune={"init_ckpt": str(init_ckpt)})
        model.attach_judge(tiny_predictor, "tiny judge")
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=morpho)
        return model

    assert fine_tune(path).global_step == 1  # the base's data
    checkpoint[DATA_SPEC_KEY]["seed"] = 1  # as if trained with data.seed=1
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"seed: 1 there, 0 here.*data\.seed="):
        fine_tune(tmp_path / "other.ckpt")
    del checkpoint[DATA_SPEC_KEY]  # a checkpoint from before the spec was recorded
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert fine_tune(tmp_path / "old.ckpt").global_step == 1


def test_resuming_through_lightning_on_other_data_is_refused_and_the_model_knows_its_data(
    morpho, data_dir, tmp_path
):
    first = quiet_trainer(max_steps=2, limit_val_batches=0)
    first.fit(tiny("vae", morpho), datamodule=morpho)
    first.save_checkpoint(tmp_path / "run.ckpt")
    other = MorphoMNISTDataModule(data_dir=str(data_dir), limit=morpho.limit, batch_size=32, seed=1)
    with pytest.raises(ValueError, match=r"other data than this run \(seed: 0 there, 1 here\)"):
        quiet_trainer(max_steps=3, limit_val_batches=0).fit(
            tiny("vae", morpho), datamodule=other, ckpt_path=tmp_path / "run.ckpt"
        )
    resumed = tiny("vae", morpho)
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(
        resumed, datamodule=morpho, ckpt_path=tmp_path / "run.ckpt"
    )
    assert resumed.global_step == 3
    # the loaded model knows its data, and the command line and explorer rebuild that split
    loaded = load_model(tmp_path / "run.ckpt")
    assert loaded.trained_on == morpho.split_spec
    loaded.trained_on = {**loaded.trained_on, "seed": 1, "version": 7}  # not an argument: unused
    assert datamodule_for(loaded, str(data_dir)).seed == 1
    assert datamodule_for(loaded, str(data_dir), {"seed": 0}).seed == 0  # what the user passes wins
