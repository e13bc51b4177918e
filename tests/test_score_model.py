"""The score model behind `shap_features`: its readable properties, exact SHAP values that add up, storage that
round-trips and refuses malformed trees, and the method's answer through a fitted bundle."""

from __future__ import annotations

import numpy as np
import pytest

from training.score_model import MIN_PICTURES, _regressor, fidelity, fit_score_model
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
    return pictures, maps, [float(m.max()) for m in maps], np.array(good)


@pytest.fixture(scope="module")
def fitted() -> tuple[ScoreModel, list, list]:
    pictures, maps, scores, good = calibration_set(np.random.default_rng(0))
    model = fit_score_model(pictures, maps, scores, good, threshold=0.6, seed=0)
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
    # a target the properties cannot predict: noise scores give a low held-out R² and the model says so
    pictures, maps, scores, good = calibration_set(np.random.default_rng(1))
    noise = np.random.default_rng(2).uniform(0.1, 2.0, len(scores))
    blind = fit_score_model(pictures, maps, list(noise), good, threshold=0.6, seed=0)
    assert blind.fidelity["r2"] < 0.3 and not blind.faithful
    assert fidelity(np.array([1.0, 2.0]), np.array([1.0, 2.0]), 1.5) == {"r2": 1.0, "verdict_agreement": 1.0, "n": 2}
    assert fit_score_model(pictures[:MIN_PICTURES - 1], maps, scores, good, 0.6) is None


def test_storage_round_trips_and_refuses_malformed_trees(fitted):
    model, pictures, maps = fitted
    features = np.stack([model.properties(p, m) for p, m in zip(pictures[:5], maps[:5])])
    stored = model.to_tensors()
    again = ScoreModel.from_stored(stored, model.to_meta())
    np.testing.assert_array_equal(again.predict(features), model.predict(features))
    cycle = {k: v.clone() for k, v in stored.items()}
    cycle["children_left"][0, 1] = 0  # a child pointing back at the root: a loop for shap's C code
    with pytest.raises(ValueError, match="malformed"):
        ScoreModel.from_stored(cycle, model.to_meta())
    with pytest.raises(ValueError, match="other properties"):
        ScoreModel.from_stored(stored, {**model.to_meta(), "properties": ["area_above_threshold"]})


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
    assert ("warning" in x) == (not x["faithful"])
    json.dumps(exp.to_json())
