"""Detection metrics (image/pixel AUROC, AUPRO: per-region overlap up to a false-positive limit, F1) and
explanation metrics (a map against a mask or the model, a model of the score against the score)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import f1_score

# the per-method keys of `training.evaluate_explanations` (docs/contracts.md), in table order
EXPLANATION_METRICS = ("pointing_game", "energy_in_mask", "heatmap_auroc", "deletion_auc", "insertion_auc",
                       "randomization_similarity", "ms")


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (undefined). Computed as the Mann-Whitney U statistic over
    n_pos * n_neg (scipy; ties count a half, as roc_auc_score does): the same number, about twice as fast on pixel
    maps (a 800-picture fit spent 17 s of its calibration in roc_auc_score)."""
    from scipy.stats import mannwhitneyu

    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return None
    scores = np.asarray(scores, dtype=np.float64).ravel()
    u = mannwhitneyu(scores[labels], scores[~labels], use_continuity=False, method="asymptotic").statistic
    return float(u / (labels.sum() * (~labels).sum()))


def aupro(masks, maps, fpr_limit: float = 0.3) -> float | None:
    """Area under the per-region-overlap curve for FPR in [0, fpr_limit], divided by fpr_limit.

    `masks` and `maps` are sequences of equally shaped pairs (pictures may differ in shape). Each connected
    component of every ground-truth mask is one region; PRO at a threshold is the mean over regions of the
    share of the region's pixels above it; FPR is measured on all normal pixels. Exact and vectorised: pixels
    are sorted once, and both curves are cumulative sums over that order.
    """
    id_parts, score_parts = [], []
    n_regions = 0
    for mask, amap in zip(masks, maps):
        mask = np.asarray(mask, dtype=bool)
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        id_parts.append(np.where(labelled > 0, labelled + n_regions, 0).ravel())
        score_parts.append(np.asarray(amap, dtype=np.float64).ravel())
        n_regions += count
    region_ids = np.concatenate(id_parts)
    n_normal = int((region_ids == 0).sum())
    if n_regions == 0 or n_normal == 0:
        return None
    sizes = np.bincount(region_ids.ravel(), minlength=n_regions + 1).astype(np.float64)
    scores, ids = np.concatenate(score_parts), region_ids
    order = np.argsort(-scores, kind="stable")
    scores, ids = scores[order], ids[order]
    pro_step = np.where(ids > 0, 1.0 / (sizes[ids] * n_regions), 0.0)
    fpr_step = (ids == 0) / n_normal
    # Only points where the score changes are thresholds a detector could use.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    fpr = np.r_[0.0, np.cumsum(fpr_step)[last_of_run]]
    pro = np.r_[0.0, np.cumsum(pro_step)[last_of_run]]
    keep = fpr <= fpr_limit
    fpr_cut, pro_cut = fpr[keep], pro[keep]
    if fpr_cut[-1] < fpr_limit and keep.sum() < len(fpr):
        j = int(keep.sum())  # first point past the limit: interpolate PRO at exactly fpr_limit
        t = (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        fpr_cut = np.r_[fpr_cut, fpr_limit]
        pro_cut = np.r_[pro_cut, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    return float(np.trapezoid(pro_cut, fpr_cut) / fpr_limit)


def binary_report(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """AUROC plus F1 and accuracy of `score > threshold` against boolean labels."""
    labels = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores) > threshold
    return {
        "image_auroc": auroc(labels, scores),
        "f1": float(f1_score(labels, pred, zero_division=0)),
        "accuracy": float((pred == labels).mean()),
    }


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """F1 at the best threshold (a reference for how well a stored threshold was chosen, as anomalib reports);
    None without defects (undefined)."""
    from sklearn.metrics import precision_recall_curve

    if not np.asarray(labels, dtype=bool).any():
        return None
    precision, recall, _ = precision_recall_curve(np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


# -- explanation quality ---------------------------------------------------------------------------
def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by `pixels` (a (2p+1)-square neighbourhood)."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3)), iterations=pixels) if pixels else mask


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 8) -> float:
    """1.0 if the heatmap's maximum lies inside the mask dilated by `tolerance` pixels, else 0.0."""
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return float(dilate(mask.astype(bool), tolerance)[peak])


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heatmap's positive mass that falls inside the mask."""
    positive = np.clip(heatmap, 0, None)
    total = positive.sum()
    return float(positive[mask.astype(bool)].sum() / total) if total > 0 else None


def heatmap_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Pixel AUROC of the heatmap against the mask."""
    return auroc(mask, heatmap)


def perturbation_curve(score_fn, image: np.ndarray, reference: np.ndarray, heatmap: np.ndarray,
                       steps: int = 16, insert: bool = False) -> np.ndarray:
    """RISE deletion/insertion: scores as the most salient pixels (in `steps` equal chunks) are replaced by the
    reference (deletion) or revealed on top of it (insertion). `image`/`reference` are [3, H, W]."""
    order = np.argsort(-heatmap.ravel(), kind="stable")
    n = order.size
    batch = []
    for k in range(steps + 1):
        chosen = np.zeros(n, dtype=bool)
        chosen[order[: int(round(k * n / steps))]] = True
        chosen = chosen.reshape(heatmap.shape)[None]
        batch.append(np.where(chosen, image, reference) if insert else np.where(chosen, reference, image))
    return np.asarray(score_fn(np.stack(batch)), dtype=np.float64)


def curve_auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps on [0, 1]."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def rank_correlation(a: np.ndarray, b: np.ndarray, size: int = 56) -> float | None:
    """Spearman correlation of two maps after average-pooling to size x size (the randomisation check); None
    when either map is constant (undefined: e.g. SHAP on a randomised head whose probability saturates)."""
    from scipy.stats import spearmanr

    def pool(x: np.ndarray) -> np.ndarray:
        h, w = x.shape
        return x[: h - h % size, : w - w % size].reshape(size, h // size, size, w // size).mean(axis=(1, 3)).ravel()

    pa, pb = pool(a), pool(b)
    if np.ptp(pa) == 0 or np.ptp(pb) == 0:
        return None
    return float(spearmanr(pa, pb).statistic)


def fidelity(predicted: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """R² of `predicted` against the true `scores` (None with fewer than 3 or no spread), their root-mean-square
    gap, and the share of pictures on which both give the same verdict at `threshold`."""
    predicted, scores = np.asarray(predicted, float), np.asarray(scores, float)
    spread = float(((scores - scores.mean()) ** 2).sum())
    r2 = 1.0 - float(((scores - predicted) ** 2).sum()) / spread if spread > 0 and len(scores) >= 3 else None
    agreement = float(((predicted > threshold) == (scores > threshold)).mean()) if len(scores) else None
    rmse = float(np.sqrt(((scores - predicted) ** 2).mean())) if len(scores) else None
    return {"r2": None if r2 is None else round(r2, 4), "rmse": None if rmse is None else round(rmse, 4),
            "verdict_agreement": None if agreement is None else round(agreement, 4), "n": int(len(scores))}
