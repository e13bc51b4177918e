"""evaluate_explanations writes the contract JSON, and the scores it reports behave as they must."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training import evaluate_explanations
from training.cli import run

KEYS = {"pointing_game", "energy_in_mask", "heatmap_auroc", "deletion_auc", "insertion_auc",
        "randomization_similarity", "ms"}


@pytest.fixture(scope="module")
def full_bundle(texture_data, texture_bundle, tmp_path_factory):
    from training.data import load_dataset
    from training.train_classifier import TrainConfig, train

    out = tmp_path_factory.mktemp("full") / "weave"
    shutil.copytree(texture_bundle, out)
    train(load_dataset("mvtec", texture_data), out, ["cnn", "vit"], TrainConfig(epochs=2, views=2, batch_size=8),
          log=lambda msg: None)
    return out


@pytest.mark.slow
def test_contract_json_and_stored_table(full_bundle, texture_data, tmp_path):
    out = tmp_path / "x.json"
    methods = "anomaly_map,retrieval,gradcam,gradcam_pp,saliency,attention_rollout"
    assert run(evaluate_explanations.main, ["--data", str(texture_data), "--bundle", str(full_bundle), "--json",
                                            str(out), "--methods", methods, "--limit", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 3
    assert set(result["methods"]) == set(methods.split(","))
    for name, row in result["methods"].items():
        assert set(row) == KEYS, name
        assert 0 <= row["pointing_game"] <= 1 and 0 <= row["energy_in_mask"] <= 1
        assert -1 <= row["randomization_similarity"] <= 1 and row["ms"] > 0
    # PatchCore finds drawn defects on a regular texture: its map must point at them
    assert result["methods"]["anomaly_map"]["pointing_game"] == 1.0
    assert result["methods"]["anomaly_map"]["heatmap_auroc"] > 0.9
    stored = json.loads((full_bundle / "bundle.json").read_text())["metrics"]["explanations"]
    assert stored == result
    # the app's report card shows the stored table, one row per method, columns in QUALITY_COLUMNS order
    from space.catalogue import QUALITY_COLUMNS, Catalogue

    catalogue = Catalogue.from_sources(str(full_bundle))
    _, quality = catalogue.report_card(catalogue.categories[0])
    assert [row[0] for row in quality][:-1] == list(result["methods"])
    assert quality[-1][0].startswith("edge_control") and quality[-1][-1].startswith("control")
    assert result["controls"]["edge_control"]["randomization_similarity"] == pytest.approx(1.0)
    assert quality[0][1:-1] == [result["methods"]["anomaly_map"][k] for k in QUALITY_COLUMNS[1:-1]]
    for row in quality[:-1]:  # the last column reads the randomisation check (the control row excepted)
        similarity = row[QUALITY_COLUMNS.index("randomization_similarity")]
        assert row[-1] == ("undefined (a map was constant)" if similarity is None else
                           "passes" if similarity <= 0.5 else "FAILS: map barely depends on the weights")


def test_unsupported_method_is_one_clear_error(texture_bundle, texture_data, tmp_path, capsys):
    assert run(evaluate_explanations.main, ["--data", str(texture_data), "--bundle", str(texture_bundle),
                                            "--json", str(tmp_path / "x.json"), "--methods", "gradcam"]) == 2
    assert "cannot run gradcam" in capsys.readouterr().err


def test_a_model_of_the_score_is_scored_by_its_fidelity(texture_bundle, texture_data, tmp_path):
    """shap_features has no map to score: its row is its fidelity on these pictures beside the fitted one, and the
    report card's last column says so."""
    out = tmp_path / "x.json"
    assert run(evaluate_explanations.main, ["--data", str(texture_data), "--bundle", str(texture_bundle), "--json",
                                            str(out), "--methods", "anomaly_map,shap_features", "--limit", "3",
                                            "--no-store"]) == 0
    row = json.loads(out.read_text())["methods"]["shap_features"]
    assert row["fidelity"]["n"] == 3 and 0 <= row["fidelity"]["verdict_agreement"] <= 1
    assert 0 <= row["fidelity"]["follows"] <= 1 and row["fidelity"]["rmse"] >= 0
    fitted = json.loads((texture_bundle / "bundle.json").read_text())["components"]["patchcore"]["score_model"]
    assert row["calibration_fidelity"] == fitted["fidelity"]
    assert row["pointing_game"] is None and row["randomization_similarity"] is None and row["ms"] > 0
    from space.catalogue import _sanity

    assert _sanity(row).startswith("explains a model of the score: R²")


def test_the_curves_follow_the_detectors_score_and_delete_towards_a_good_picture(texture_bundle, texture_data):
    """Without a classifier the deletion/insertion curves follow PatchCore's score over its threshold (the verdict's
    scale), and a defect deleted entirely (shown as its closest good training picture) loses most of its score."""
    from training.data import load_dataset
    from xai.explanation_quality import curve_component, curve_score, deletion_reference
    from xai.inspector import Inspector

    inspector = Inspector.from_source(str(texture_bundle))
    case = evaluate_explanations.masked_defects(load_dataset("mvtec", texture_data), 1)[0]
    x = inspector.model_input(case.picture, curve_component(inspector))
    reference = deletion_reference(inspector.explain_context(), x)
    assert curve_component(inspector) == "patchcore" and reference.shape == tuple(x.shape[1:])
    defect, deleted = curve_score(inspector)(np.stack([x[0].numpy(), reference]))
    assert defect == pytest.approx(inspector.detect(case.picture).score / inspector.threshold, rel=1e-4)
    assert defect > 1.0 and deleted < 0.5 * defect  # a JPEG thumbnail of a good part: near the threshold
