"""What share of good pictures a threshold flags: a Gumbel (extreme-value) model of good pictures' image scores.

An image score is the maximum of a smoothed anomaly map, and maxima of many patch scores follow an extreme-value
law (Fisher-Tippett), whose right tail is heavier than a normal's. Fitted by its moments (closed form, vectorised
over leading axes). On the dev sets the log-normal it replaces flagged 8-10 % of its own held-out strips, crops and
tyres at its "5 %" threshold, and this model 0-5 % (docs/benchmarks.md). The detector's threshold, the run-time
sensitivity and the fit's choice of settings all read good scores through this one model.
"""

from __future__ import annotations

import numpy as np

EULER_GAMMA = 0.5772156649015329


def gumbel_fit(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of a Gumbel fitted by moments to `scores` along its last axis (leading axes kept)."""
    scores = np.asarray(scores, float)
    spread = scores.std(axis=-1, ddof=1) if scores.shape[-1] > 1 else np.zeros(scores.shape[:-1])
    scale = np.maximum(spread * np.sqrt(6.0) / np.pi, 1e-9)
    return scores.mean(axis=-1) - EULER_GAMMA * scale, scale


def threshold_for(good: np.ndarray, false_alarms: float) -> float:
    """The score above which a share `false_alarms` (0-1, exclusive) of good pictures falls, by the model fitted
    to the good pictures' scores `good`."""
    if not 0.0 < false_alarms < 1.0:
        raise ValueError(f"a share of false alarms lies strictly between 0 and 1, not {false_alarms}")
    if not len(good):
        raise ValueError("a threshold needs the scores of some good pictures")
    loc, scale = gumbel_fit(np.asarray(good, float))
    return float(loc - scale * np.log(-np.log1p(-false_alarms)))


def share_below(good: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For each of `scores` (last axis), the modelled share of good pictures scoring below it; `good`'s leading
    axes (bootstrap resamples, candidates) pair with `scores`' leading axes."""
    loc, scale = gumbel_fit(good)
    z = (np.asarray(scores, float) - np.asarray(loc)[..., None]) / np.asarray(scale)[..., None]
    return np.exp(-np.exp(-np.clip(z, -50.0, None)))  # far below the good scores: 0, without an overflow


def false_alarm_share(good: np.ndarray, threshold: float) -> float:
    """The modelled share of good pictures scoring above `threshold`: the inverse of `threshold_for`."""
    return float(1.0 - share_below(np.asarray(good, float), np.asarray([threshold], float))[0])
