"""Fit the score model (xai.score_model) on the detector's calibration pictures: held-out good ones and the
synthetic anomalies made from them, each with its anomaly map and score. A gradient-boosted regression tree
ensemble (scikit-learn), small and shallow because there are tens to a few hundred pictures; its fidelity is
measured by 5-fold cross-validation (each picture predicted by a model fitted without it) before the final fit on
all of them.
"""

from __future__ import annotations

import numpy as np

from xai.score_model import PROPERTIES, Reference, ScoreModel, properties

MIN_PICTURES = 20  # fewer calibration pictures than this: no score model (its fidelity could not be measured)
FOLDS = 5
TREES, DEPTH, LEARNING_RATE, MIN_LEAF = 100, 3, 0.1, 3


def _regressor(seed: int):
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=TREES, max_depth=DEPTH, learning_rate=LEARNING_RATE,
                                     min_samples_leaf=MIN_LEAF, random_state=seed)


def fidelity(predicted: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """R² of `predicted` against the true `scores`, and the share of pictures on which both give the same
    verdict at `threshold`."""
    predicted, scores = np.asarray(predicted, float), np.asarray(scores, float)
    spread = float(((scores - scores.mean()) ** 2).sum())
    r2 = 1.0 - float(((scores - predicted) ** 2).sum()) / spread if spread > 0 else 0.0
    agreement = float(((predicted > threshold) == (scores > threshold)).mean())
    return {"r2": round(r2, 4), "verdict_agreement": round(agreement, 4), "n": int(len(scores))}


def fit_score_model(pictures: list[np.ndarray], maps: list[np.ndarray], scores: list[float], good: np.ndarray,
                    threshold: float, seed: int = 0) -> ScoreModel | None:
    """The score model from `pictures` (uint8 [H, W, 3]), their anomaly `maps` and `scores`; `good` marks the good
    ones (the reference the offsets are measured from). Good pictures and anomalies weigh equally in total, so the
    chart's base value is the middle of the two, not whichever the calibration happened to make more of. None
    with fewer than MIN_PICTURES pictures or no good one."""
    from sklearn.model_selection import KFold, cross_val_predict

    good = np.asarray(good, bool)
    if len(pictures) < MIN_PICTURES or not good.any():
        return None
    reference = Reference.of([p for p, g in zip(pictures, good) if g])
    features = np.stack([properties(p, m, threshold, reference) for p, m in zip(pictures, maps)])
    target = np.asarray(scores, np.float64)
    weight = np.where(good, 0.5 / good.sum(), 0.5 / max(1, (~good).sum())) * len(good)
    held_out = cross_val_predict(_regressor(seed), features, target, params={"sample_weight": weight},
                                 cv=KFold(FOLDS, shuffle=True, random_state=seed))
    measured = {**fidelity(held_out, target, threshold),
                "data": f"{FOLDS}-fold cross-validation on the calibration pictures (good and synthetic anomalies)"}
    regressor = _regressor(seed).fit(features, target, sample_weight=weight)
    trees = [tree_arrays(estimator[0].tree_, LEARNING_RATE) for estimator in regressor.estimators_]
    base = float(np.asarray(regressor.init_.predict(features[:1])).ravel()[0])
    return ScoreModel(trees, base, threshold, reference, measured)


def tree_arrays(tree, scale: float) -> dict[str, np.ndarray]:
    """One fitted scikit-learn tree as shap's dict arrays, its leaf values times the boosting `scale`."""
    return {"children_left": tree.children_left.astype(np.int32),
            "children_right": tree.children_right.astype(np.int32),
            "features": tree.feature.astype(np.int32),
            "thresholds": tree.threshold.astype(np.float64),
            "values": tree.value[:, 0, 0].astype(np.float64) * scale,
            "node_sample_weight": tree.weighted_n_node_samples.astype(np.float64)}


__all__ = ["MIN_PICTURES", "PROPERTIES", "fidelity", "fit_score_model", "tree_arrays"]
