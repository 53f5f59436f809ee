"""The explorer page in a real headless browser (Debian's chromium, driven by Selenium), with
tiny models of the VAE, the HVAE and the flow: what a user does, and how fast the page answers."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from PIL import Image

from tests.browser import MISSING

pytest.importorskip("selenium")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def page(tiny_explorer):
    from models.explore import free_port
    from models.explore_page import launch
    from tests.browser import Page

    app, url = launch(tiny_explorer, port=free_port(), block=False)
    browser = Page(url)
    yield browser
    browser.close()
    app.close()


def test_a_user_explores_a_test_image(page, tiny_explorer, tmp_path):
    # pick a test image
    page.set_slider("test-image", 5)
    page.wait_for(lambda: "test image 5" in page.text("do-label"), "test image 5 to load")
    factual = page.slider_value("do-thickness")
    assert factual == pytest.approx(tiny_explorer.test_query(5).pa["thickness"].item(), abs=0.05)
    assert page.image("truth-image")  # the null intervention's truth: the image itself

    # move thickness: every model's counterfactual changes, and the truth is shown
    latencies = []
    for step, value in enumerate([factual + 1.0, factual + 2.0, factual + 0.5, 1.0, 6.0]):
        latencies.append(page.move_and_time("do-thickness", value, watched="cf-0"))
        page.wait_for(lambda: "do(thickness=" in page.text("do-label"), "the do label")
        assert page.image("truth-image"), f"no true counterfactual after move {step}"
        assert "recomputed" in page.text("cf-attributes-0")  # intensity followed thickness
    print(
        f"\nslider to page update, 3 tiny models: median {statistics.median(latencies):.3f} s, "
        f"worst {max(latencies):.3f} s over {len(latencies)} moves"
    )

    # an upload of the wrong size gets a message on the page
    page.open_tab("Upload")
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(wrong)
    page.upload("upload", wrong)
    page.wait_for(lambda: page.has_file("upload"), "the upload to arrive")
    page.click("use-upload")
    page.wait_for(lambda: "24x20 pixels" in page.text("explorer-message"), "the size message")
    assert "take 32x32 images" in page.text("explorer-message")

    # nothing left this machine
    assert page.requested_hosts() <= {"127.0.0.1", "localhost"}
