"""What the head has learned: activation maximisation raises the class through a planted model, the strongest
cells are one per picture, and a trained CNN head's bundle carries the picture, its facts and its page section."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from xai.feature_visualisation import strongest_cells, visualise_class


class RedDetector(nn.Module):
    """A planted classifier: class 1's logit grows with the picture's red minus its green and blue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean((1, 2)) - x[:, 1:].mean((1, 2, 3))
        return torch.stack([-4 * red, 4 * red], dim=1)


def test_the_optimised_picture_raises_the_class_by_what_the_model_responds_to():
    picture, probability = visualise_class(RedDetector(), 1, 64, (0.5,) * 3, (0.5,) * 3, steps=40)
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
    assert probability > 0.9
    red, green, blue = picture.reshape(-1, 3).mean(0)
    assert red > green + 40 and red > blue + 40
    other, other_p = visualise_class(RedDetector(), 0, 64, (0.5,) * 3, (0.5,) * 3, steps=40)
    assert other_p > 0.9 and other.reshape(-1, 3).mean(0)[0] < red - 40
    # the same seed gives the same picture (computed once per bundle, reproducibly)
    again, _ = visualise_class(RedDetector(), 1, 64, (0.5,) * 3, (0.5,) * 3, steps=40)
    np.testing.assert_array_equal(again, picture)


def test_strongest_cells_are_the_highest_one_per_picture():
    maps = torch.zeros(3, 4, 5)
    maps[0, 1, 2], maps[0, 3, 3] = 5.0, 4.0  # picture 0's second-highest cell beats picture 2's best
    maps[1, 0, 4] = 1.0
    maps[2, 2, 0] = 3.0
    assert strongest_cells(maps, 2) == [(0, 1, 2), (2, 2, 0)]
    assert strongest_cells(maps, 5) == [(0, 1, 2), (2, 2, 0), (1, 0, 4)]


def test_a_trained_cnn_head_stores_what_it_has_learned(classifier_bundle):
    from PIL import Image

    from space.catalogue import Catalogue
    from training.feature_visualisation import PATCH_SIDE, file_name

    meta = json.loads((classifier_bundle / "bundle.json").read_text())
    facts = meta["components"]["classifier_cnn"]["feature_visualisation"]
    assert "feature_visualisation" not in meta["components"]["classifier_vit"]
    assert facts["file"] == file_name("classifier_cnn") and facts["class"] == "blob"
    assert 0 <= facts["probability"] <= 1 and facts["seconds"] > 0 and len(facts["patches"]) >= 1
    size = meta["preprocessing"]["input_size"]
    assert all(0 <= b[0] < b[2] <= size and b[2] - b[0] == PATCH_SIDE for b in (p["box"] for p in facts["patches"]))
    with Image.open(classifier_bundle / facts["file"]) as picture:
        assert picture.format == "PNG" and picture.width > size
    catalogue = Catalogue()
    name = catalogue.add_source(str(classifier_bundle))
    shown, caption = catalogue.learned(name)
    assert shown.size[0] > size and "blob" in caption
    info = catalogue.info()["categories"][name]["feature_visualisation"]
    assert info["probability"] == facts["probability"] and info["caption"]


def test_an_unreadable_feature_visualisation_leaves_the_report_card_standing(classifier_bundle, tmp_path):
    """A bundle is data from elsewhere: a truncated or renamed picture is skipped, not a broken category."""
    import shutil

    from space.catalogue import Catalogue
    from training.feature_visualisation import file_name

    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    target = bundle / file_name("classifier_cnn")
    target.write_bytes(target.read_bytes()[:200])  # truncated
    catalogue = Catalogue()
    name = catalogue.add_source(str(bundle))
    assert catalogue.learned(name) is None
    target.write_bytes(b"GIF89a" + b"\0" * 100)  # not a PNG
    assert catalogue.learned(name) is None
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["components"]["classifier_cnn"]["feature_visualisation"]["file"] = "../../../etc/passwd"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    other = Catalogue()
    assert other.learned(other.add_source(str(bundle))) is None  # a name outside the bundle is not read
