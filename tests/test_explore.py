"""The counterfactual explorer's callbacks, without a browser (tests/test_explore_browser.py has
the page in one)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.explore import (
    Explorer,
    how_changed,
    parse_settings,
    read_image,
    slider_step,
    to_view,
)
from models.explore_page import Callbacks
from models.loading import file_sha256
from tests.helpers import save_checkpoint

SKIP = object()  # stands in for gradio.skip(): "leave this output as it was"


@pytest.fixture
def explorer(tiny_explorer):
    return tiny_explorer


@pytest.fixture
def tiny_models(tiny_explorer):
    return tiny_explorer.models


@pytest.fixture
def calls(explorer, tmp_path):
    return Callbacks(explorer, skip=SKIP, exports=tmp_path / "exports")


def outputs(calls, result):
    """Name the outputs of a start event (pick_test, pick_upload, reset)."""
    n, m = len(calls.names), len(calls.explorer.models)
    message, query, *rest = result
    controls, view = rest[:n], rest[n:]
    answer, label, factual, factual_text, truth, truth_text = view[:6]
    images, diffs, texts = view[6 : 6 + m], view[6 + m : 6 + 2 * m], view[6 + 2 * m :]
    return dict(
        message=message,
        query=query,
        controls=dict(zip(calls.names, controls)),
        answer=answer,
        label=label,
        factual=factual,
        truth=truth,
        truth_text=truth_text,
        images=images,
        diffs=diffs,
        texts=texts,
    )


def view_outputs(calls, result):
    message, *view = result
    return outputs(calls, [message, None, *[None] * len(calls.names), *view])


def test_picking_a_test_image_shows_its_null_intervention(calls, morpho):
    shown = outputs(calls, calls.pick_test(3, True))
    assert shown["message"] == ""
    batch = morpho.test_set.batch([3])
    for name, value in shown["controls"].items():
        assert value == pytest.approx(batch["pa"][name].item())
    assert shown["answer"].do == {}
    assert np.array_equal(shown["factual"], to_view(batch["x"]))
    assert np.array_equal(shown["truth"], shown["factual"])  # the null intervention's truth
    for answer in shown["answer"].answers:  # residual on: every family gives x back
        assert (answer.counterfactual.image - batch["x"]).abs().max() < 1e-4
    # without the residual the decoders alone are far from exact, and the page shows it
    off = view_outputs(calls, calls.intervene(shown["query"], False, *shown["controls"].values()))
    errors = {
        a.name: (a.counterfactual.image - batch["x"]).abs().max() for a in off["answer"].answers
    }
    assert errors["vae"] > 1e-2 and errors["flow"] < 1e-4  # the flow has no residual to turn off


def test_moving_thickness_changes_the_counterfactuals_and_recomputes_intensity(calls, morpho):
    start = outputs(calls, calls.pick_test(5, True))
    values = dict(start["controls"])
    values["thickness"] += 2.0
    moved = view_outputs(calls, calls.intervene(start["query"], True, *values.values()))
    assert moved["message"] == ""
    answer = moved["answer"]
    assert set(answer.do) == {"thickness"}
    assert how_changed(morpho.graph, answer.do) == {
        "thickness": "do",
        "intensity": "recomputed",
        "digit": "kept",
    }
    assert not np.array_equal(moved["images"][0], start["images"][0])  # the VAE's, as shown
    for model_answer in answer.answers:
        cf = model_answer.counterfactual
        assert (cf.image - cf.factual_image).abs().max() > 1e-2, model_answer.name
    for model_answer in answer.answers:
        parents = model_answer.counterfactual.parents
        assert parents["thickness"].item() == pytest.approx(values["thickness"])
        assert parents["intensity"].item() != pytest.approx(values["intensity"], abs=1e-3)
        assert model_answer.truth_l1 is not None
    truth, truth_parents = morpho.true_counterfactual(
        start["query"].index, {"thickness": values["thickness"]}
    )
    assert np.array_equal(moved["truth"], to_view(truth))
    assert answer.truth_parents["intensity"] == pytest.approx(truth_parents["intensity"].item())
    assert "(recomputed)" in moved["texts"][0]


def test_a_value_between_slider_steps_is_not_an_intervention(explorer):
    query = explorer.test_query(2)
    step = slider_step(explorer.graph["thickness"])
    factual = query.pa["thickness"].item()
    rounded = round(factual / step) * step  # what the page's slider may send back
    assert explorer.interventions(query, {"thickness": rounded}) == {}
    assert explorer.interventions(query, {"thickness": factual + step}) == {
        "thickness": pytest.approx(factual + step)
    }
    with pytest.raises(ValueError, match="unknown attribute 'thikness'"):
        explorer.interventions(query, {"thikness": 2.0})


def test_bad_values_give_a_message_and_change_nothing(calls):
    start = outputs(calls, calls.pick_test(1, True))
    values = dict(start["controls"], thickness=50.0)
    message, *rest = calls.intervene(start["query"], True, *values.values())
    assert "outside its support [0.5, 10]" in message and "thickness" in message
    assert all(value is SKIP for value in rest)
    message, *rest = calls.intervene(None, True, *values.values())
    assert "pick a test image" in message and all(value is SKIP for value in rest)
    message, *rest = calls.pick_test(10**6, True)
    assert "does not exist" in message and all(value is SKIP for value in rest)


def test_do_digit_has_no_truth_and_says_why(calls):
    start = outputs(calls, calls.pick_test(0, True))
    values = dict(start["controls"], digit=(start["controls"]["digit"] + 1) % 10)
    shown = view_outputs(calls, calls.intervene(start["query"], True, *values.values()))
    assert shown["answer"].do == {"digit": values["digit"]}
    assert shown["truth"] is None and "no ground truth" in shown["truth_text"]
    for model_answer in shown["answer"].answers:
        assert model_answer.counterfactual.parents["digit"].item() == values["digit"]


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_uploads(calls, morpho, tmp_path):
    batch = morpho.test_set.batch([7])
    pixels = (batch["x"][0, 0] * 255).round().to(torch.uint8).numpy()
    good = _png(tmp_path / "digit.png", pixels)
    attributes = [batch["pa"][n].item() for n in calls.names]

    message, *rest = calls.pick_upload(
        _png(tmp_path / "small.png", pixels[:20, :20]), True, *attributes
    )
    assert "is 20x20 pixels; the models take 32x32 images" in message
    assert all(value is SKIP for value in rest)
    (tmp_path / "notes.txt").write_text("not an image")
    message, *_ = calls.pick_upload(str(tmp_path / "notes.txt"), True, *attributes)
    assert "notes.txt is not an image" in message
    message, *_ = calls.pick_upload(None, True, *attributes)
    assert "no image uploaded" in message
    message, *_ = calls.pick_upload(good, True, attributes[0], None, attributes[2])
    assert "needs its 'intensity'" in message and "Measure" in message
    message, *_ = calls.pick_upload(good, True, 99.0, *attributes[1:])
    assert "outside its support" in message

    shown = outputs(calls, calls.pick_upload(good, True, *attributes))
    assert shown["message"] == ""
    assert torch.equal(shown["query"].x, batch["x"])  # a PNG of an 8-bit digit is lossless
    assert shown["truth"] is None and "uploaded image has no stored noise" in shown["truth_text"]

    message, *measured = calls.measure(good)
    expected = morpho.measure_attributes(batch["x"])
    assert message == ""
    assert measured[0] == pytest.approx(expected["thickness"].item())
    assert measured[1] == pytest.approx(expected["intensity"].item())
    assert measured[2] is SKIP  # the digit has no model-free measurement: entered by hand


def test_soundness_of_one_query(calls):
    start = outputs(calls, calls.pick_test(4, True))
    values = dict(start["controls"], intensity=200.0)
    message, frame = calls.check(start["query"], True, *values.values())
    assert message == ""
    rows = {(r["model"], str(r["residual"])): r for r in frame.to_dict("records")}
    assert set(rows) == {
        ("vae", "True"),
        ("vae", "False"),
        ("hvae", "True"),
        ("hvae", "False"),
        ("flow", "n/a"),
    }
    for key in [("vae", "True"), ("hvae", "True"), ("flow", "n/a")]:  # exact abduction
        assert rows[key]["composition m=10"] < 0.05  # 0-255 scale
        assert rows[key]["reversibility"] >= 0
    # a briefly trained decoder alone drifts: composition with the residual off is far from 0
    assert rows[("vae", "False")]["composition m=1"] > 1.0


def test_export_writes_the_panel_and_the_numbers(calls):
    start = outputs(calls, calls.pick_test(6, True))
    message, files = calls.export(start["answer"])
    assert message == ""
    png, table = files
    with Image.open(png) as image:
        assert image.size[0] > 600  # factual, truth and three models with their change maps
    rows = list(csv.reader(io.StringIO(Path(table).read_text())))
    assert rows[0] == ["query", start["answer"].query.label]
    header = rows[2]
    assert header[:4] == ["attribute", "how", "factual", "truth"]
    assert {"vae: intended", "vae: judge", "vae: measured"} <= set(header)
    assert [r[0] for r in rows[3:6]] == ["thickness", "intensity", "digit"]
    message, *_ = calls.export(None)
    assert "nothing to export" in message


def test_read_image_converts_to_the_models_channels(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    path = _png(tmp_path / "red.png", rgb)
    grey = read_image(path, (1, 32, 32))
    assert grey.shape == (1, 1, 32, 32) and 0.2 < grey.mean() < 0.4  # luminance of red
    assert read_image(path, (3, 32, 32)).shape == (1, 3, 32, 32)


def test_from_checkpoints_reports_what_failed_and_matches_reports(
    tiny_models, morpho, data_dir, tmp_path
):
    good = save_checkpoint(tiny_models["vae"], tmp_path / "run" / "checkpoints" / "last.ckpt")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"checkpoint_sha256": file_sha256(good), "num_test": 10}))
    stranger = tmp_path / "other.json"
    stranger.write_text(json.dumps({"checkpoint_sha256": "0" * 64, "checkpoint": "x.ckpt"}))
    explorer = Explorer.from_checkpoints(
        [good, broken],
        data_dir=str(data_dir),
        data_overrides={"limit": morpho.limit, "seed": 0},
        reports=[report, stranger],
        judge="none",
    )
    assert list(explorer.models) == ["run/last"]
    assert explorer.reports["run/last"]["num_test"] == 10
    problems = "\n".join(explorer.problems)
    assert "could not load" in problems and "broken.ckpt" in problems
    assert "x.ckpt, which is not loaded" in problems
    assert explorer.judge_names == ["measured"]
    with pytest.raises(ValueError, match="no checkpoint loaded"):
        Explorer.from_checkpoints([broken], data_dir=str(data_dir))
    with pytest.raises(ValueError, match="judge must be"):
        Explorer.from_checkpoints([good], judge="maybe")


@pytest.mark.parametrize(
    "argv, error",
    [
        ([], "a model is required: ckpt_path=PATH or pretrained=NAME"),
        (["--port", "80"], "is not a setting"),
        (["ckpt_path"], "is not a setting"),
        (["ckpt_path=a.ckpt", "prot=80"], "unknown setting 'prot'"),
        (["ckpt_path=a.ckpt", "port=http"], "port must be a number"),
        (["ckpt_path=a.ckpt", "judge=none", "judge=train"], "judge is given twice"),
    ],
)
def test_explore_settings_are_checked(argv, error):
    with pytest.raises(ValueError, match=error):
        parse_settings(argv)


def test_explore_settings_repeat_checkpoints_and_reports():
    settings = parse_settings(
        ["ckpt_path=a.ckpt", "ckpt_path=b.ckpt", "report=r.json", "data.seed=1", "port=0"]
    )
    assert settings["ckpt_path"] == ["a.ckpt", "b.ckpt"]
    assert settings["report"] == ["r.json"] and settings["data"] == {"seed": 1}
    assert settings["port"] == 0


def test_the_page_builds(explorer):
    import gradio

    from models.explore_page import build_app

    blocks = build_app(explorer)
    assert isinstance(blocks, gradio.Blocks)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"do-thickness", "do-intensity", "do-digit", "cf-0", "cf-2", "truth-image"} <= ids


def test_explore_help_and_missing_checkpoint(capsys, tmp_path):
    from models.__main__ import main as models_main

    assert models_main(["explore", "--help"]) == 0
    usage = capsys.readouterr().out
    assert "python -m models explore ckpt_path=" in usage and "offline" in usage
    models_main(["--help"])
    assert "python -m models explore" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no checkpoint loaded:\n.*missing.ckpt"):
        models_main(["explore", f"ckpt_path={tmp_path / 'missing.ckpt'}"])
