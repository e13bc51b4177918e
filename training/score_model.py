"""Fit the score model (xai.score_model) on the detector's calibration pictures: held-out good ones and the
synthetic anomalies made from them, each with its anomaly map and score. A gradient-boosted regression tree
ensemble (scikit-learn), small and shallow because there are tens to a few hundred pictures; its fidelity is
measured by 5-fold cross-validation (each picture predicted by a model fitted without it) before the final fit on
all of them.
"""

from __future__ import annotations

import numpy as np

from xai.metrics import fidelity
from xai.score_model import PROPERTIES, Reference, ScoreModel, Statistics, combine, map_properties

MIN_PICTURES = 20  # fewer calibration pictures than this: no score model (its fidelity could not be measured)
FOLDS = 5
TREES, DEPTH, LEARNING_RATE, MIN_LEAF = 100, 3, 0.1, 3


def _regressor(seed: int):
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=TREES, max_depth=DEPTH, learning_rate=LEARNING_RATE,
                                     min_samples_leaf=MIN_LEAF, random_state=seed)


def fit_score_model(pictures: list[np.ndarray], maps: list[np.ndarray], scores: list[float], good: np.ndarray,
                    groups: np.ndarray, threshold: float, seed: int = 0) -> ScoreModel | None:
    """The score model from `pictures` (uint8 [H, W, 3]), their anomaly `maps` and `scores`; `good` marks the good
    ones (the reference the offsets are measured from), `groups` the good picture each was made from. Good pictures
    and anomalies weigh equally in total, so the chart's base value is the middle of the two, not whichever the
    calibration made more of. The fidelity folds keep a picture and the anomalies made from it together, and each
    fold's reference comes from its own training pictures, so "unseen" means unseen. None with fewer than
    MIN_PICTURES pictures or fewer than two source pictures."""
    from sklearn.model_selection import GroupKFold

    good, groups = np.asarray(good, bool), np.asarray(groups)
    sources = len(np.unique(groups))
    if len(pictures) < MIN_PICTURES or not good.any() or sources < 2:
        return None
    stats = [Statistics.of(p) for p in pictures]
    of_maps = [map_properties(m, threshold) for m in maps]
    target = np.asarray(scores, np.float64)
    weight = np.where(good, 0.5 / good.sum(), 0.5 / max(1, (~good).sum())) * len(good)

    def features(reference: Reference) -> np.ndarray:
        return np.stack([combine(s, m, reference) for s, m in zip(stats, of_maps)])

    held_out = np.empty_like(target)
    for train, test in GroupKFold(min(FOLDS, sources)).split(target, target, groups):
        reference = Reference.of([stats[i] for i in train if good[i]])
        regressor = _regressor(seed).fit(features(reference)[train], target[train], sample_weight=weight[train])
        held_out[test] = regressor.predict(features(reference)[test])
    measured = {**fidelity(held_out, target, threshold),
                "data": f"{min(FOLDS, sources)}-fold cross-validation on the calibration pictures (good ones and "
                        "synthetic anomalies), each picture's anomalies in its fold"}
    reference = Reference.of([s for s, g in zip(stats, good) if g])
    everything = features(reference)
    regressor = _regressor(seed).fit(everything, target, sample_weight=weight)
    trees = [tree_arrays(estimator[0].tree_, LEARNING_RATE) for estimator in regressor.estimators_]
    base = float(np.asarray(regressor.init_.predict(everything[:1])).ravel()[0])
    return ScoreModel(trees, base, threshold, reference, measured)


def tree_arrays(tree, scale: float) -> dict[str, np.ndarray]:
    """One fitted scikit-learn tree as shap's dict arrays, its leaf values times the boosting `scale`."""
    return {"children_left": tree.children_left.astype(np.int32),
            "children_right": tree.children_right.astype(np.int32),
            "features": tree.feature.astype(np.int32),
            "thresholds": tree.threshold.astype(np.float64),
            "values": tree.value[:, 0, 0].astype(np.float64) * scale,
            "node_sample_weight": tree.weighted_n_node_samples.astype(np.float64)}


__all__ = ["MIN_PICTURES", "PROPERTIES", "fit_score_model", "tree_arrays"]
