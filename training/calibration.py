"""The detector's decision threshold from data, without real defects.

Good pictures the memory bank never saw are scored, and so are synthetic anomalies made from them
(`training.anomalies`, whose masks are exact). The threshold is the (1 - FALSE_ALARM_TARGET) quantile of the
extreme-value model fitted to the good scores (`xai.false_alarms`): about 5 % false alarms, an operating point a
quality engineer can state, whatever the product. A fitted quantile holds with few held-out pictures where the
sample quantile cannot. The synthetic anomalies check it: their detection rate (and
the map's pointing game on them) at that threshold is stored beside it. They do not set it: on the dev sets they
were easier than real defects, and the threshold that best separated them from good pictures (balanced
accuracy) sat above half of ELPV's real defective cells (F1 0.61 where the best threshold gave 0.74; this rule
0.71). Real defective pictures, when a user has some (`fit_patchcore --defects`), are real evidence: then the
threshold maximises balanced accuracy between the good and the defective pictures.
"""

from __future__ import annotations

import numpy as np

from xai.false_alarms import threshold_for

FALSE_ALARM_TARGET = 0.05
RULE_GOOD = (f"{1 - FALSE_ALARM_TARGET:.0%} quantile of a Gumbel (extreme-value) model fitted to held-out good "
             "pictures' scores "
             f"(about {FALSE_ALARM_TARGET:.0%} false alarms), checked on synthetic anomalies made from them")
RULE_REAL = ("maximum balanced accuracy between held-out good pictures and real defective pictures "
             "(ties: the lowest threshold, i.e. the highest good score)")
SYNTHETIC_PER_IMAGE = 4  # synthetic anomalies made from each held-out good picture ...
MAX_SYNTHETIC = 128  # ... down to 1 each past this many: they check the threshold (they do not set it), and
# 4 x 80 held-out pictures cost an 800-picture fit 40 % of its time for no better a check


def synthetic_per_image(n_pictures: int) -> int:
    """How many synthetic anomalies to make from each of `n_pictures` held-out good pictures."""
    return max(1, min(SYNTHETIC_PER_IMAGE, MAX_SYNTHETIC // max(1, n_pictures)))


def balanced_accuracy_threshold(good: np.ndarray, defect: np.ndarray) -> float:
    """The lowest threshold t maximising (share of good <= t + share of defect > t) / 2."""
    good, defect = np.sort(np.asarray(good, float)), np.sort(np.asarray(defect, float))
    if not len(good) or not len(defect):
        raise ValueError("the threshold rule needs scores of both good pictures and anomalies")
    candidates = np.unique(np.r_[good, defect, good[0] - 1.0])
    passed = np.searchsorted(good, candidates, side="right") / len(good)
    caught = 1.0 - np.searchsorted(defect, candidates, side="right") / len(defect)
    return float(candidates[int(np.argmax(passed + caught))])  # argmax: the first, i.e. lowest, of any tie


def operating_point(good: np.ndarray, defect: np.ndarray, threshold: float) -> dict:
    """Expected false-alarm and detection rates of `score > threshold` on the calibration scores."""
    good, defect = np.asarray(good, float), np.asarray(defect, float)
    return {"false_alarm_rate": round(float((good > threshold).mean()), 4),
            "detection_rate": round(float((defect > threshold).mean()), 4) if len(defect) else None}


def leave_one_out_false_alarms(good: np.ndarray) -> float | None:
    """The share of held-out good scores above the threshold fitted to the *other* ones: the false-alarm
    rate on good pictures that neither the bank nor the threshold saw (None with fewer than 3 scores)."""
    good = np.asarray(good, float)
    if len(good) < 3:
        return None
    alarms = [good[i] > threshold_for(np.delete(good, i), FALSE_ALARM_TARGET) for i in range(len(good))]
    return round(float(np.mean(alarms)), 4)


def calibrate(good: np.ndarray, synthetic: np.ndarray, real: np.ndarray | None = None) -> dict:
    """Threshold, rule and evidence: the scores of every group and the operating point on each."""
    good = np.asarray(good, float)
    use_real = real is not None and len(real) > 0
    if not len(good):
        raise ValueError("the threshold rule needs scores of held-out good pictures")
    if use_real:
        threshold = balanced_accuracy_threshold(good, real)
    else:
        threshold = threshold_for(good, FALSE_ALARM_TARGET)
    evidence = {
        "threshold": threshold,
        "threshold_rule": RULE_REAL if use_real else RULE_GOOD,
        "good_scores": [round(float(s), 6) for s in good],
        "synthetic_scores": [round(float(s), 6) for s in synthetic],
        "synthetic": operating_point(good, synthetic, threshold),
        "false_alarm_rate": operating_point(good, [], threshold)["false_alarm_rate"],
        "false_alarm_rate_unseen": None if use_real else leave_one_out_false_alarms(good),
    }
    if use_real:
        evidence["real_defect_scores"] = [round(float(s), 6) for s in real]
        evidence["real"] = operating_point(good, real, threshold)
    return evidence
