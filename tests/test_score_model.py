"""The score model behind `shap_features`: its readable properties, exact SHAP values that add up, storage that
round-trips and refuses malformed trees, and the method's answer through a fitted bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.score_model import MIN_PICTURES, _regressor, fit_score_model
from xai.metrics import fidelity
from xai.score_model import PROPERTIES, Reference, ScoreModel, properties


def blob_map(shape: tuple[int, int], centres: list[tuple[int, int]], height: float, base: float = 0.2) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    amap = np.full(shape, base)
    for cy, cx in centres:
        amap = amap + height * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    return amap


def calibration_set(rng: np.random.Generator, n: int = 60):
    """Good pictures (flat maps) and anomalies (one or two blobs of random height), grey noise pictures."""
    pictures, maps, good = [], [], []
    for i in range(n):
        picture = rng.integers(90, 110, (48, 64, 3), dtype=np.uint8)
        is_good = i % 3 == 0
        centres = [] if is_good else [(int(rng.integers(8, 40)), int(rng.integers(8, 56)))
                                      for _ in range(1 + i % 2)]
        maps.append(blob_map((48, 64), centres, float(rng.uniform(0.5, 2.0))) + rng.uniform(0, 0.05))
        pictures.append(picture)
        good.append(is_good)
    return pictures, maps, [float(m.max()) for m in maps], np.array(good), np.arange(n) // 3


@pytest.fixture(scope="module")
def fitted() -> tuple[ScoreModel, list, list]:
    pictures, maps, scores, good, groups = calibration_set(np.random.default_rng(0))
    model = fit_score_model(pictures, maps, scores, good, groups, threshold=0.6, seed=0)
    assert model is not None
    return model, pictures, maps


def test_properties_read_what_they_say():
    reference = Reference(brightness=100 / 255, brightness_spread=0.01, chromaticity=(1 / 3, 1 / 3),
                          chromaticity_spread=(0.01, 0.01), edge_level=0.05)
    plain = np.full((48, 64, 3), 100, np.uint8)
    two = blob_map((48, 64), [(24, 16), (24, 48)], 1.0)
    row = dict(zip(PROPERTIES, properties(plain, two, 0.6, reference)))
    assert row["anomalous_regions"] == 2
    assert 0 < row["area_above_threshold"] < 20
    assert row["peak_border_distance"] == pytest.approx(100 * 16 / 48, abs=3)
    assert abs(row["brightness_offset"]) < 0.1 and row["colour_offset"] < 0.1 and row["edge_density"] == 0
    brighter = plain.copy()
    brighter[..., 0] = 140  # brighter and redder
    corner = blob_map((48, 64), [(0, 0)], 1.0)
    row = dict(zip(PROPERTIES, properties(brighter, corner, 0.6, reference)))
    assert row["brightness_offset"] > 3 and row["colour_offset"] > 3
    assert row["peak_border_distance"] == 0 and row["anomalous_regions"] == 1
    striped = plain.copy()
    striped[:, ::2] = 200  # fine stripes: edges everywhere, little large-scale contrast
    row = dict(zip(PROPERTIES, properties(striped, corner, 0.6, reference)))
    assert row["edge_density"] > 50 and row["low_frequency_share"] < 5
    halves = plain.copy()
    halves[:, 32:] = 160  # one large step: mostly large-scale contrast
    assert dict(zip(PROPERTIES, properties(halves, corner, 0.6, reference)))["low_frequency_share"] > 50


def test_shap_values_are_exact_and_add_up_to_the_models_output(fitted):
    model, pictures, maps = fitted
    features = np.stack([model.properties(p, m) for p, m in zip(pictures, maps)])
    base, values = model.explain(features)
    predicted = model.predict(features)
    np.testing.assert_allclose(base + values.sum(1), predicted, atol=1e-6)
    # the stored trees are the fitted scikit-learn model: the same predictions
    good = np.arange(len(pictures)) % 3 == 0
    weight = np.where(good, 0.5 / good.sum(), 0.5 / (~good).sum()) * len(good)
    regressor = _regressor(0).fit(features, [float(m.max()) for m in maps], sample_weight=weight)
    np.testing.assert_allclose(predicted, regressor.predict(features), atol=1e-6)
    # the pictures are alike noise and only the maps differ: the map's properties carry most of the credit
    share = np.abs(values).mean(0) / np.abs(values).mean(0).sum()
    assert share[:3].sum() > 0.75, dict(zip(PROPERTIES, share.round(3)))


def test_fidelity_is_measured_on_pictures_the_model_did_not_see(fitted):
    model, _, _ = fitted
    assert model.fidelity["n"] == 60
    assert model.fidelity["r2"] > 0.7 and model.fidelity["verdict_agreement"] > 0.9 and model.faithful
    rmse = model.fidelity["rmse"]
    assert 0 < rmse and model.follows(1.0 + 1.9 * rmse, 1.0) and not model.follows(1.0 + 2.1 * rmse, 1.0)
    # a target the properties cannot predict: noise scores give a low held-out R² and the model says so
    pictures, maps, scores, good, groups = calibration_set(np.random.default_rng(1))
    noise = np.random.default_rng(2).uniform(0.1, 2.0, len(scores))
    blind = fit_score_model(pictures, maps, list(noise), good, groups, threshold=0.6, seed=0)
    assert blind.fidelity["r2"] < 0.3 and not blind.faithful
    assert fidelity(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), 1.5) == {
        "r2": 1.0, "rmse": 0.0, "verdict_agreement": 1.0, "n": 3}
    assert fidelity(np.array([1.0, 2.0]), np.array([1.0, 2.0]), 1.5)["r2"] is None  # too few to say
    assert fidelity(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]), 1.5)["r2"] is None  # no spread
    assert fit_score_model(pictures[:MIN_PICTURES - 1], maps, scores, good, groups, 0.6) is None
    assert fit_score_model(pictures, maps, scores, good, np.zeros(len(pictures)), 0.6) is None  # one source


def test_fidelity_folds_keep_a_picture_and_its_anomalies_together():
    """Anomalies that copy their source picture's look would let a picture-wise split peek at the answer: with
    each source's score carried by its look alone, grouped folds see no such leak (R² near or below 0) where a
    picture-wise split would score the leak."""
    rng = np.random.default_rng(3)
    pictures, maps, scores, good, groups = [], [], [], [], []
    for source in range(20):
        level = int(rng.integers(40, 200))  # each source picture's brightness ...
        score = float(rng.uniform(0.2, 2.0))  # ... and a score that only its group shares
        for copy in range(3):
            pictures.append(np.full((32, 32, 3), level, np.uint8))
            maps.append(np.full((32, 32), 0.1))
            scores.append(score)
            good.append(copy == 0)
            groups.append(source)
    model = fit_score_model(pictures, maps, scores, np.array(good), np.array(groups), threshold=5.0, seed=0)
    assert model.fidelity["r2"] < 0.3, model.fidelity


def test_storage_round_trips_and_refuses_malformed_trees(fitted):
    model, pictures, maps = fitted
    features = np.stack([model.properties(p, m) for p, m in zip(pictures[:5], maps[:5])])
    stored, meta = model.to_tensors(), model.to_meta()
    again = ScoreModel.from_stored(stored, meta)
    np.testing.assert_array_equal(again.predict(features), model.predict(features))
    assert again.fidelity == {k: model.fidelity[k] for k in ("r2", "rmse", "verdict_agreement", "n")} | {
        "data": model.fidelity["data"]}

    def broken(change) -> dict:
        copy = {k: v.clone() for k, v in stored.items()}
        change(copy)
        return copy

    def both_next(t):  # every inner node sends both children to the next node: 2^depth visits in shap's C code
        n = int(t["n_nodes"][0])
        t["children_left"][0, :n - 1] = torch.arange(1, n)
        t["children_right"][0, :n - 1] = torch.arange(1, n)
    attacks = {
        "a child pointing back at the root": lambda t: t["children_left"].__setitem__((0, 1), 0),
        "children shared by two parents": both_next,
        "float children": lambda t: t.__setitem__("children_left", t["children_left"].double() + 0.5),
        "no nodes": lambda t: t["n_nodes"].__setitem__(0, 0),
        "more nodes than stored": lambda t: t["n_nodes"].__setitem__(0, 10_000),
        "values shorter than the children": lambda t: t.__setitem__("values", t["values"][:, :2]),
        "a feature that does not exist": lambda t: t["features"].__setitem__((0, 0), len(PROPERTIES)),
        "a NaN threshold": lambda t: t["thresholds"].__setitem__((0, 0), float("nan")),
        "zero sample weight": lambda t: t["node_sample_weight"].__setitem__((0, 0), 0.0),
        "a missing array": lambda t: t.pop("values"),
    }
    for name, attack in attacks.items():
        with pytest.raises(ValueError):
            ScoreModel.from_stored(broken(attack), meta)
            pytest.fail(name)
    deep = {k: v[:1].clone() for k, v in stored.items()}  # one chain far deeper than any fit makes
    n = 200
    deep["n_nodes"] = torch.tensor([n])
    left = torch.full((1, n), -1, dtype=torch.int32)
    right = torch.full((1, n), -1, dtype=torch.int32)
    for i in range(0, n - 2, 2):  # a leaf on the left, the chain going on to the right
        left[0, i], right[0, i] = i + 1, i + 2
    deep.update(children_left=left, children_right=right, features=torch.zeros((1, n), dtype=torch.int32),
                thresholds=torch.zeros((1, n), dtype=torch.float64), values=torch.zeros((1, n), dtype=torch.float64),
                node_sample_weight=torch.ones((1, n), dtype=torch.float64))
    with pytest.raises(ValueError, match="too deep"):
        ScoreModel.from_stored(deep, meta)
    for bad_meta in ({**meta, "properties": ["area_above_threshold"]}, {**meta, "threshold": 0.0},
                     {**meta, "reference": {**meta["reference"], "brightness_spread": -1.0}},
                     {**meta, "reference": {**meta["reference"], "chromaticity": [0.3]}},
                     {**meta, "base_offset": "nan"}, {**meta, "fidelity": {"r2": "high"}}):
        with pytest.raises(ValueError):
            ScoreModel.from_stored(stored, bad_meta)


def test_shap_features_through_a_fitted_bundle(texture_bundle, texture_data):
    """The fit made a score model; the method answers with the contract's extras, values that add up, the true
    score beside the model's, and shap's waterfall."""
    import io
    import json

    from PIL import Image

    from xai.inspector import Inspector

    meta = json.loads((texture_bundle / "bundle.json").read_text())["components"]["patchcore"]["score_model"]
    assert meta["fidelity"]["n"] >= MIN_PICTURES and set(meta["fidelity"]) >= {"r2", "verdict_agreement"}
    inspector = Inspector.from_source(str(texture_bundle))
    assert "shap_features" in inspector.methods()
    picture = next((texture_data / "test").glob("*/*.png"))
    exp = inspector.explain(picture, "shap_features")
    x = exp.extras
    assert set(x["features"]) == set(PROPERTIES) == set(x["values"])
    assert x["base_value"] + sum(x["values"].values()) == pytest.approx(x["output"], abs=1e-6)
    assert x["score"] == pytest.approx(float(inspector.detect(picture).scores["patchcore"]), rel=1e-4)
    assert Image.open(io.BytesIO(x["plot_png"])).size[0] > 300
    assert x["faithful"] == (x["fidelity"]["r2"] >= 0.7)
    assert x["follows_this_picture"] == (abs(x["output"] - x["score"]) <= 2 * x["fidelity"]["rmse"])
    assert ("warning" in x) == (not x["faithful"] or not x["follows_this_picture"])
    json.dumps(exp.to_json())
