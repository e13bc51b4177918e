"""A visitor's own part as a category (the app's /fit and /train_classifier), through the same code as the
command lines: `fit_patchcore.fit` on the good pictures given, `train_classifier.train` for the CNN head, and
`evaluate_explanations.evaluate_methods` on synthetic anomalies made from the pictures, for its report card.

With no labelled defects, the report card measures what the given pictures allow: false alarms on good pictures
the memory bank never saw (cross-fitted, see fit_patchcore.CalibrationPlan), detection and localisation on
synthetic anomalies with exact masks, and detection of the real defective pictures when some were given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.data import Dataset, Sample
from xai.bundle import read_bundle_meta, write_meta
from xai.bundle_meta import BundleMeta, PatchCoreMeta

EXPLAIN_CASES = 12  # synthetic anomalies the explanation table is measured on
TRAIN_EPOCHS = 6


def picture_dataset(pictures: list[Path], name: str) -> Dataset:
    """The given good pictures as a one-class (mvtec layout) training set with no test split."""
    root = str(Path(pictures[0]).parent) if pictures else "."
    return Dataset("mvtec", root, ["good", "defect"], "good", [Sample(Path(p), "good", False) for p in pictures], [],
                   provenance={"name": name, "layout": "mvtec", "license": None,
                               "source": "pictures uploaded to the defect-xai app"})


def fit_part(pictures: list[Path], out: Path, name: str, trunk, defects: list[Path] | None = None) -> dict:
    """Fit the detector on `pictures` into bundle `out` (PatchCoreConfig defaults, as the CLI); its report."""
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig

    fit(picture_dataset(pictures, name), out, PatchCoreConfig(), category=name, trunk=trunk,
        defects=[Sample(Path(p), "defect", True) for p in defects or []])
    return report(read_bundle_meta(out))


def report(meta: BundleMeta) -> dict:
    """The report card of a category made from pictures, from what its bundle.json holds."""
    patchcore = meta.patchcore or PatchCoreMeta()  # no detector: every fact unknown
    cal = patchcore.calibration or {}
    synthetic = cal.get("synthetic", {})
    card = {
        "good_pictures": (patchcore.fit or {}).get("n_images"),
        "threshold_rule": patchcore.threshold_rule,
        "calibration": {"method": cal.get("method"), "folds": cal.get("folds"),
                        "scored_good_pictures": cal.get("n_images")},
        "false_alarms": {
            "unseen_good_pictures": cal.get("false_alarm_rate_unseen"),
            "at_threshold_on_calibration": cal.get("false_alarm_rate"),
            "note": ("share of good pictures the bank never saw that score above a threshold fitted without them "
                     "(leave-one-out); null with fewer than 3 scored pictures"),
        },
        "synthetic_anomalies": {"n": cal.get("n_synthetic"), "detection_rate": synthetic.get("detection_rate"),
                                "pointing_game": synthetic.get("pointing_game"),
                                "heatmap_auroc": synthetic.get("heatmap_auroc")},
        "real_defects": ({"n": cal.get("n_real_defects"), "detection_rate": cal["real"].get("detection_rate")}
                         if "real" in cal else None),
        "explanations": (meta.metrics or {}).get("explanations"),
        # shap_features explains a small model of the score: how closely it follows the score on unseen pictures
        "score_model_fidelity": patchcore.score_model and patchcore.score_model.fidelity,
    }
    if cal.get("method") == "copies":
        card["warning"] = ("Fitted on one picture: nothing could be held out, so the threshold comes from "
                           "re-photographed-like copies of it and will raise more false alarms than stated. "
                           "Add pictures.")
    return card


def training_estimate_s(features_s: float, epochs: int = TRAIN_EPOCHS) -> float:
    """Seconds training the head on a category's pictures should take, from this machine's own pace at its fit
    (`features_s`, the trunk pass over the same pictures): 8 views a picture plus 4 for validation through the
    trunk, then `epochs` passes of the head (measured: about as long as the features once more for 6 epochs),
    then the feature visualisation (192 steps of one picture: 14 s for bottle's head here; 20 s allowed) and the
    explanation table (2 s a case, and Score-CAM's 2 x 3.5 s on each of its cases)."""
    from training.evaluate_explanations import SLOW_CARD_CASES

    return round(features_s * 12 * (1 + epochs / 6) + 10 + 20 + 2 * EXPLAIN_CASES + 7 * SLOW_CARD_CASES, 0)


def train_part(bundle: Path, pictures: list[Path], name: str, trunk, epochs: int = TRAIN_EPOCHS) -> dict:
    """Train the CNN head on `pictures` (with synthetic anomalies, as train_classifier does for one-class data) into
    `bundle`, then measure the explanation table on synthetic anomalies; returns the new report card."""
    from training.train_classifier import TrainConfig, train

    dataset = picture_dataset(pictures, name)
    if len(pictures) < 4:
        # one picture gives the validation split nothing: the views of every picture are what it learns from
        dataset.train = dataset.train * (4 // max(1, len(pictures)) + 1)
    train(dataset, bundle, ["cnn"], TrainConfig(epochs=epochs), input_size=read_bundle_meta(bundle).input_size,
          category=name, log=lambda _: None, trunk=trunk)
    measure_explanations(bundle, pictures, trunk)
    return report(read_bundle_meta(bundle))


def synthetic_cases(pictures: list[Path], n: int, seed: int = 0) -> list:
    """`n` synthetic anomalies made from the pictures (cycling through them), with their exact masks."""
    from training.anomalies import synthesize
    from training.evaluate_explanations import Case
    from xai.io import load_image

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        picture = load_image(pictures[i % len(pictures)])
        picture.thumbnail((448, 448))  # enough for a 224 px model input; keeps the work per case small
        made, mask, _ = synthesize(np.asarray(picture), rng)
        exact = Image.fromarray(mask.astype(np.uint8) * 255)
        cases.append(Case(Image.fromarray(made), lambda shape, m=exact: np.asarray(
            m.resize((shape[1], shape[0]), Image.NEAREST)) > 127))
    return cases


def measure_explanations(bundle: Path, pictures: list[Path], trunk) -> dict:
    """The explanation-quality table (with the edge-detector control) on synthetic anomalies, stored in the bundle."""
    from training.card import write_card
    from training.evaluate_explanations import SLOW_CARD_CASES, evaluate_methods
    from xai.bundle import load
    from xai.explainers import report_card_methods
    from xai.inspector import Inspector

    inspector = Inspector(load(bundle), trunk)
    methods = [m for m in report_card_methods() if m in inspector.methods()]  # the ones its components allow
    table = evaluate_methods(inspector, synthetic_cases(pictures, EXPLAIN_CASES), methods,
                             slow_cases=SLOW_CARD_CASES)
    table["data"] = "synthetic anomalies made from the category's own good pictures (exact masks)"
    meta = read_bundle_meta(bundle)
    meta.metrics = {**(meta.metrics or {}), "explanations": table}
    write_meta(bundle, meta)
    write_card(bundle)
    return table
