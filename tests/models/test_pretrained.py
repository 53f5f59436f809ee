"""The pretrained zoo: save and load by name, weights checked against their manifest, and the
shipped set (every model loads offline, answers counterfactuals, has its card, fits 50 MB)."""

import json
import pickle
import shutil

import pytest
import torch

from models import load_model
from models.diffae import DiffusionAutoencoder
from models.pretrained import PRETRAINED_DIR, available, load_pretrained, save_pretrained
from tests.families import FAMILIES, fit_briefly

#: The issue's cap on every shipped weight file together.
SHIPPED_BYTES_CAP = 50 * 2**20


@pytest.fixture(scope="module")
def batch(morpho):
    return morpho.test_set.batch(range(6))


@pytest.mark.parametrize("family", ["vae", "hvae", "flow", "ild", "ild_vae", "diffae"])
def test_round_trip_gives_the_same_counterfactuals(family, morpho, batch, tmp_path):
    model = FAMILIES[family][0](morpho)
    model.log_dict = lambda *args, **kwargs: None
    fit_briefly(model, morpho, steps=2)
    model.eval()
    model.trained_against = "judge-x"
    model.trained_on = {"dataset": morpho.name, "seed": 3}
    manifest = save_pretrained(model, tmp_path, "tiny", info={"summary": "a test"})
    loaded = load_model(manifest)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.trained_against == "judge-x" and loaded.trained_on == model.trained_on
    assert json.loads(manifest.read_text())["summary"] == "a test"
    do = {"thickness": batch["pa"]["thickness"] + 1}
    torch.manual_seed(0)
    ours = model.counterfactual(batch["x"], batch["pa"], do)
    torch.manual_seed(0)
    theirs = loaded.counterfactual(batch["x"], batch["pa"], do)
    assert torch.equal(ours.image, theirs.image)


@pytest.fixture
def exported(morpho, tmp_path):
    model = FAMILIES["vae"][0](morpho).eval()
    return save_pretrained(model, tmp_path, "tiny"), tmp_path / "tiny.safetensors"


def test_loading_unpickles_nothing(exported, monkeypatch):
    manifest, _ = exported

    def refuse(*args, **kwargs):
        raise AssertionError("loading a pretrained model unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_model(manifest)


def test_a_truncated_weight_file_says_so(exported):
    manifest, weights = exported
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or is another model's.*save_pretrained"):
        load_model(manifest)


def test_changed_bytes_fail_the_hash(exported):
    manifest, weights = exported
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_model(manifest)


def test_a_swapped_weight_file_fails_the_hash(exported, morpho, tmp_path):
    manifest, weights = exported
    torch.manual_seed(1)  # the same architecture, other weights: the same size
    other = save_pretrained(FAMILIES["vae"][0](morpho), tmp_path / "other", "tiny")
    shutil.copy(other.parent / "tiny.safetensors", weights)
    with pytest.raises(ValueError, match="another model's weights"):
        load_model(manifest)


def test_a_manifest_of_another_architecture_is_refused(exported):
    manifest, _ = exported
    data = json.loads(manifest.read_text())
    data["hyper_parameters"]["latent_dim"] += 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not build a ConditionalVAE"):
        load_model(manifest)


def test_missing_weights_and_unknown_names(exported):
    manifest, weights = exported
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="weights of 'tiny' are missing"):
        load_model(manifest)
    with pytest.raises(FileNotFoundError, match="neither a pretrained model.*--list"):
        load_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="python train.py"):  # a path: a checkpoint
        load_model("outputs/no-such.ckpt")


def test_an_unwritable_directory_says_which(morpho, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write the pretrained model 'tiny'.*writable"):
        save_pretrained(FAMILIES["vae"][0](morpho), blocker / "sub", "tiny")


# -- the shipped set ------------------------------------------------------------------------------
SHIPPED = available()


def test_the_shipped_weights_fit_the_cap():
    total = sum(path.stat().st_size for path in PRETRAINED_DIR.glob("*.safetensors"))
    assert total < SHIPPED_BYTES_CAP, f"{total / 2**20:.1f} MB of shipped weights"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_loads_offline_and_answers(name, morpho, batch):
    manifest = SHIPPED[name]
    for suffix in (".md", ".png", ".safetensors"):
        assert (PRETRAINED_DIR / f"{name}{suffix}").is_file(), f"{name}{suffix} is missing"
    assert manifest["headline"] and manifest["provenance"]["commit"]
    assert manifest["provenance"]["training minutes"] <= 30  # the budget per model
    model = load_pretrained(name)
    # every shipped model was trained by the zoo on data.seed=0's split, which evaluate.py checks
    assert model.trained_on["dataset"] == model.dataset_name and model.trained_on["seed"] == 0
    if model.dataset_name != morpho.name:
        pytest.skip(f"{name} is a {model.dataset_name} model; the fixture data are Morpho-MNIST")
    defaults = model.resolve_options({})
    null = model.counterfactual(batch["x"], batch["pa"], {})
    error = (null.image - batch["x"]).abs()
    if isinstance(model, DiffusionAutoencoder):  # DDIM inversion is approximate
        assert error.mean() * 255 <= 1.0  # issue 18's bound on the null intervention's L1
    elif defaults.get("residual") or "residual" not in defaults:  # the residual, or a bijection
        assert error.max() < 1e-3
    if "residual" in defaults:  # the decoder alone: a trained model's reconstruction
        decoder = model.counterfactual(batch["x"], batch["pa"], {}, residual=False)
        assert 0 < (decoder.image - batch["x"]).abs().mean() < 0.1
