"""What an engineer's reviews teach a fitted detector without a refit, and the sensitivity they set at run time.

A picture reviewed good joins the memory bank: the fewest of its patches that bring every one of its (border-scaled)
patch distances down to the median score of the fit's held-out good pictures, chosen farthest first (PatchCore's
k-center rule, continued from the bank; written here because no library continues a coreset). Its score then
sits at most at a typical good picture's, since the map is a convex smoothing of its patch scores. The rows are
added to the FAISS index as they are (no k-means rebuilt); undo rebuilds the index from the fitted bank and the
other reviews, which gives exactly the scores from before. A picture reviewed defective is kept as labelled
evidence. The sensitivity is the share of good pictures the threshold may flag, read through the threshold's own
model of good scores (`xai.false_alarms`) from the held-out good pictures and those reviewed good.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from xai.errors import UserError
from xai.false_alarms import false_alarm_share, threshold_for

REVIEWS_FILE = "reviews.safetensors"  # the rows reviews added, in the order of their entries
VERDICTS = ("good", "defect")
MAX_REVIEWS = 1000  # entries one category keeps
REVIEW_SHARE = 0.5  # the rows reviews add: at most this share of the fitted bank ...
MIN_REVIEW_ROWS = 4096  # ... and at least this many (a small visitor's bank still learns from a few pictures)
SENSITIVITY_RANGE = (0.001, 0.5)  # a share of good pictures flagged: from 1 in 1,000 to 1 in 2


class ReviewError(UserError, ValueError):
    """A review that cannot be taken (bank full, unknown id, bad verdict or sensitivity); the message says why."""


@dataclass
class Review:
    """One reviewed picture: its verdict and what it did to the score."""

    id: str
    verdict: str
    at: str  # ISO time (UTC)
    score_before: float
    score_after: float
    threshold: float  # the category's threshold when it was reviewed
    rows: int  # patches it added to the bank (0 for a defect)
    image_size: tuple[int, int]
    name: str | None = None


@dataclass
class Reviews:
    """A category's reviews, the rows they added to the bank, and its sensitivity (None: the fit's threshold)."""

    entries: list[Review] = field(default_factory=list)
    rows: np.ndarray | None = None  # float32 [R, D], entry by entry
    sensitivity: float | None = None

    def to_meta(self, cap: int) -> dict:
        return {"entries": [asdict(e) for e in self.entries], "rows_file": REVIEWS_FILE, "rows_cap": cap,
                "sensitivity": self.sensitivity}

    @property
    def n_rows(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    def good_scores(self) -> list[float]:
        """Scores of the pictures reviewed good, from before they joined the bank: good pictures it had not seen."""
        return [e.score_before for e in self.entries if e.verdict == "good"]

    def find(self, review_id: str) -> int:
        for i, entry in enumerate(self.entries):
            if entry.id == review_id:
                return i
        raise ReviewError(f"No review {review_id!r} in this category (undone already, or never made here).")

    def without(self, i: int) -> tuple[Reviews, Review]:
        """These reviews less entry i and its rows."""
        start = sum(e.rows for e in self.entries[:i])
        entry = self.entries[i]
        rows = None if self.rows is None else np.delete(self.rows, np.s_[start:start + entry.rows], axis=0)
        return Reviews(self.entries[:i] + self.entries[i + 1:], rows, self.sensitivity), entry


def rows_cap(bank_size: int) -> int:
    """How many rows reviews may add to a bank of `bank_size` fitted patches."""
    return max(MIN_REVIEW_ROWS, int(REVIEW_SHARE * bank_size))


def read_reviews(stored: dict | None, folder: Path) -> Reviews:
    """The reviews a bundle's detector stored (`PatchCoreMeta.reviews`; none in a bundle that has had none);
    rows from safetensors only."""
    from safetensors.torch import load_file

    if not isinstance(stored, dict):
        return Reviews()
    try:
        entries = [Review(**{**e, "image_size": tuple(e["image_size"])}) for e in stored.get("entries", [])]
        sensitivity = stored.get("sensitivity")
        if sensitivity is not None:
            sensitivity = check_sensitivity(sensitivity)
        rows = None
        if sum(e.rows for e in entries):
            rows = load_file(str(folder / REVIEWS_FILE))["rows"].numpy()
            if len(rows) != sum(e.rows for e in entries):
                raise ValueError("the reviewed rows do not match their entries")
    except (TypeError, KeyError, ValueError, OSError) as exc:
        raise ReviewError(f"The bundle's reviews cannot be read ({exc}); remove `reviews` from its bundle.json "
                          "to serve it as fitted.") from None
    return Reviews(entries, rows, sensitivity)


def write_reviews(folder: Path, reviews: Reviews, cap: int) -> None:
    """Store `reviews` in the bundle at `folder` (rows first, then bundle.json; each replaced whole)."""
    from safetensors.torch import save_file

    from xai.bundle import read_bundle_meta, write_meta

    if reviews.n_rows:
        partial = folder / f".{REVIEWS_FILE}.{secrets.token_hex(4)}"
        save_file({"rows": torch.from_numpy(np.ascontiguousarray(reviews.rows))}, str(partial))
        os.replace(partial, folder / REVIEWS_FILE)
    else:
        (folder / REVIEWS_FILE).unlink(missing_ok=True)
    meta = read_bundle_meta(folder)
    meta.patchcore.reviews = reviews.to_meta(cap)
    write_meta(folder, meta)


def check_verdict(verdict) -> str:
    if verdict not in VERDICTS:
        raise ReviewError(f"A review's verdict is one of {', '.join(VERDICTS)}, not {verdict!r}.")
    return verdict


def check_sensitivity(share) -> float:
    """A sensitivity: a number within SENSITIVITY_RANGE (a share of good pictures flagged)."""
    lo, hi = SENSITIVITY_RANGE
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not lo <= float(share) <= hi:
        raise ReviewError(f"The sensitivity is the share of good parts flagged, from {lo:g} (1 in {1 / lo:,.0f}) "
                          f"to {hi:g} (1 in {1 / hi:,.0f}), not {share!r}.")
    return float(share)


def read_sensitivity(value) -> float | None:
    """A sensitivity as a request or a command line sends it: None, "" or "fit" for the fit's threshold, else a
    share (a number, or its text), checked by check_sensitivity."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", "fit"):
            return None
        try:
            value = float(word)
        except ValueError:
            pass
    return None if value is None else check_sensitivity(value)


def sensitivity_threshold(good_scores: list[float], share: float) -> float:
    """The threshold that flags `share` of good pictures, by the model fitted to `good_scores`."""
    if len(good_scores) < 2:
        raise ReviewError("Setting a sensitivity needs the scores of at least 2 good pictures the bank never saw; "
                          "this bundle stores fewer (refit it with training.fit_patchcore).")
    return threshold_for(np.asarray(good_scores, float), check_sensitivity(share))


def flagged_share(good_scores: list[float], threshold: float) -> float | None:
    """The modelled share of good pictures above `threshold` (None without two good scores)."""
    return false_alarm_share(np.asarray(good_scores, float), threshold) if len(good_scores) >= 2 else None


def in_words(share: float | None) -> str:
    """A share of good parts flagged, as an engineer says it: "about 1 good part in 50 flagged"."""
    if share is None:
        return "unknown (too few good pictures scored)"
    if share <= 0.0005:
        return "fewer than 1 good part in 2,000 flagged"
    return f"about 1 good part in {max(1, round(1 / share)):,} flagged"


def covering_rows(rows: np.ndarray, distances: np.ndarray, factors: np.ndarray, target: float) -> np.ndarray:
    """Indices of the fewest of a picture's patch `rows` [P, D] that, added to the bank, bring every patch's
    border-scaled distance (`distances` [P] to the bank now, times its border `factors` [P]) to `target` or below:
    greedily the patch farthest from the bank and the rows picked so far (see the module docstring)."""
    rows = np.ascontiguousarray(rows, np.float32)
    target = max(float(target), 0.0) if np.isfinite(target) else 0.0  # every patch at 0 at worst: it ends
    near = np.nan_to_num(np.asarray(distances, np.float64) * factors, nan=np.inf)
    squared = np.einsum("ij,ij->i", rows, rows)
    picked: list[int] = []
    while near.max() > target:
        j = int(np.argmax(near))
        picked.append(j)
        to_j = np.sqrt(np.maximum(squared - 2.0 * (rows @ rows[j]) + squared[j], 0.0)) * factors
        np.minimum(near, to_j, out=near)
        near[j] = 0.0
    return np.asarray(picked, dtype=np.int64)


def new_review(verdict: str, before: float, after: float, threshold: float, rows: int, size: tuple[int, int],
               name: str | None) -> Review:
    return Review(secrets.token_hex(6), verdict, datetime.now(UTC).isoformat(timespec="seconds"),
                  round(float(before), 6), round(float(after), 6), round(float(threshold), 6), int(rows),
                  (int(size[0]), int(size[1])), name)
