"""The /feedback, /undo_feedback and /sensitivity requests: who may teach a category, and private copies of served
ones. Only a category's maker may teach it; a visitor's review of a served category (bottle, solar cells) first makes
that visitor a private copy (a category of theirs in the store, like one from /fit), so no stranger can teach
everyone's category to accept defects. What a review does to the detector is the library's (xai.reviews)."""

from __future__ import annotations

import shutil
from pathlib import Path

from space.categories import BUNDLE, Category
from xai.errors import UserError
from xai.reviews import Review, check_verdict, read_sensitivity

COPY_SUFFIX = " (reviewed)"
REVIEW_COLUMNS = ["feedback_id", "verdict", "picture", "score_before", "score_after", "threshold_then",
                  "patches_added", "at"]  # the review list's columns, as Teaching.reviews makes its rows


class TeachingError(UserError, ValueError):
    """A review or sensitivity request that cannot be taken; the message is for whoever sent it."""


class Teaching:
    """Reviews and sensitivity of the catalogue's categories, each saved into its bundle as it is taken."""

    def __init__(self, catalogue):
        self.catalogue = catalogue
        self.store = catalogue.made

    def feedback(self, image: str, category, verdict, caller: str) -> dict:
        """Review one picture of `category` as "good" or "defect": the /feedback JSON."""
        check_verdict(verdict)
        taught, copied_from = self._own(category, caller)
        inspector = taught.inspector
        review = inspector.review(image, verdict, name=Path(image).name if isinstance(image, str) else None)
        self._save(taught)
        return self._answer(taught, review, copied_from)

    def undo(self, category, feedback_id, caller: str) -> dict:
        """Forget review `feedback_id` of `category` (its maker only): the /undo_feedback JSON."""
        taught = self._mine(category, caller)
        review = taught.inspector.undo_review(feedback_id)
        self._save(taught)
        return {**self._answer(taught, review, None), "undone": True}

    def sensitivity(self, category, share, caller: str) -> dict:
        """Flag about `share` of good parts from now on (None or "fit": the fit's threshold): the /sensitivity JSON.
        A served category is copied for the caller first, as for a review."""
        share = read_sensitivity(share)
        taught, copied_from = self._own(category, caller)
        taught.inspector.set_sensitivity(share)
        self._save(taught)
        return {"category": taught.id, "name": taught.name, "copied_from": copied_from,
                "threshold": round(taught.inspector.thresholds["patchcore"], 6),
                "sensitivity": taught.inspector.sensitivity()}

    def reviews(self, category) -> list[list]:
        """The category's reviews as table rows (id, verdict, picture, score before, after, threshold then,
        patches added, when); empty for a category without a detector or an unknown one."""
        try:
            inspector = self.catalogue.get(category)
        except UserError:
            return []
        return [[e.id, e.verdict, e.name or "", e.score_before, e.score_after, e.threshold, e.rows, e.at]
                for e in reversed(inspector.reviews.entries)]

    # -- who may teach what -----------------------------------------------------------------------
    def _own(self, category, caller: str) -> tuple[Category, str | None]:
        """The category `caller` may teach: their own, or their private copy of a served one (made now)."""
        if isinstance(category, str) and category in self.catalogue.inspectors:
            return self._copy(category, caller), category
        return self._mine(category, caller), None

    def _mine(self, category, caller: str) -> Category:
        if not isinstance(category, str) or category in self.catalogue.inspectors:
            raise TeachingError("Only a category you made (with Fit, or by reviewing a served one) can be taught or "
                                "undone; a review of a served category makes you your own copy of it.")
        taught = self.store.get(category)
        if not taught.owner or taught.owner != caller:  # one nobody made here (placed by hand) is nobody's to teach
            raise TeachingError("Only whoever made this category can teach it.")
        if taught.pins:  # its classifier is training on a copy that replaces the bundle when done
            raise TeachingError("This category's classifier is training; teach it once the training ends.")
        return taught

    def _copy(self, name: str, caller: str) -> Category:
        """`caller`'s private copy of served category `name`: the one they hold already, else a new one, held like a
        fitted category of theirs (so a flood of reviews copies nothing twice)."""
        for held in self.store.held():
            if held.owner == caller and held.name == f"{name}{COPY_SUFFIX}":
                return self.store.get(held.id)
        source = self.catalogue.inspectors[name]
        if source.patchcore is None:
            raise TeachingError(f"{name} has no anomaly detector: reviews teach the detector's bank.")
        cid, folder = self.store.new_folder(caller)
        try:
            shutil.copytree(source.bundle.path, folder / BUNDLE, ignore=shutil.ignore_patterns(".*"))
            return self.store.add(cid, f"{name}{COPY_SUFFIX}", caller, self.catalogue.load_bundle(folder / BUNDLE))
        except BaseException:
            self.store.discard(folder)
            raise

    def _save(self, taught: Category) -> None:
        with self.store.locked():  # not while the bundle is being zipped for a download
            taught.inspector.save_reviews()

    @staticmethod
    def _answer(taught: Category, review: Review, copied_from: str | None) -> dict:
        inspector = taught.inspector
        threshold = inspector.thresholds["patchcore"]
        return {"feedback_id": review.id, "category": taught.id, "name": taught.name, "copied_from": copied_from,
                "verdict": review.verdict, "score_before": review.score_before, "score_after": review.score_after,
                "is_defect_after": review.score_after > threshold, "threshold": round(threshold, 6),
                "decided_by": inspector.decision,
                "note": None if inspector.decision == "patchcore" else
                f"{taught.name}'s verdict comes from its {inspector.decision}, which reviews do not retrain: they "
                "teach its anomaly detector (score, map, report) only.",
                "bank_size": len(inspector.patchcore.memory_bank) + inspector.reviews.n_rows,
                "rows_added": review.rows, "reviews": len(inspector.reviews.entries),
                "sensitivity": inspector.sensitivity()}

