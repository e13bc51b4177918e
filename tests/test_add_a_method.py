"""Adding an explanation method is one class and one registry line: a test-only method, registered for the test,
appears in /info, in the page's choices, through /explain and on the report card, with the caption on its class."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_hostile import call

from synthetic import texture
from xai.explainers import METHODS
from xai.explainers.base import Explainer


class Brightness(Explainer):
    """Test-only: how bright each pixel is (needs the detector's input, no model)."""

    name = "test_brightness"
    caption = "How bright each pixel is (a method this test registers)."
    component = "patchcore"
    report_card = True

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        return {"heatmap": inputs.mean(dim=1)}


@pytest.mark.slow
def test_a_new_method_is_one_class_and_one_registry_line(classifier_bundle, serve, monkeypatch, tmp_path, trunk,
                                                         part):
    from gradio_client import Client, handle_file

    from space.catalogue import Catalogue
    from training.part import measure_explanations

    monkeypatch.setitem(METHODS, Brightness.name, Brightness)  # the registry line, for this test only
    with serve(Catalogue.from_sources(str(classifier_bundle))) as (url, _):
        client = Client(f"{url}/", verbose=False)
        info = client.predict(api_name="/info")
        assert info["methods"][Brightness.name] == Brightness.caption
        assert Brightness.name in info["categories"]["binary"]["methods"]
        kind, update = call(url, "ui_category", ["binary"])  # what the page's method list offers
        assert kind == "complete" and Brightness.name in str(update[0]["choices"])
        _, exp = client.predict(handle_file(str(part)), "binary", Brightness.name, api_name="/explain")
        assert exp["method"] == Brightness.name and exp["caption"] == Brightness.caption
    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    rng = np.random.default_rng(2)
    pictures = []
    for i in range(2):
        pictures.append(tmp_path / f"good{i}.png")
        Image.fromarray(texture(rng)).save(pictures[-1])
    table = measure_explanations(bundle, pictures, trunk)
    assert Brightness.name in table["methods"] and table["methods"][Brightness.name]["pointing_game"] is not None
