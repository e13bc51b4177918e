"""The /fit and /train_classifier requests: a visitor's files become a category held in the catalogue's store,
fitted and trained by the training package's own code (training.part), in a low-priority thread."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from space.categories import BUNDLE, PICTURES
from space.lowpriority import run_low_priority
from space.uploads import gather
from training.cli import run_errors
from training.jobs import Cancelled, stop_when
from training.part import fit_part, train_part, training_estimate_s
from training.publish import publish
from xai.errors import UserError

LOG = logging.getLogger("defect_xai")
MAX_NAME = 60
NAME_PUNCTUATION = " -_.,#+()'"
TRUNK = "efficientnet_lite0"  # the trunk new categories are fitted on (PatchCoreConfig's default)


class PartError(UserError, ValueError):
    """A /fit or /train_classifier request that cannot be done; the message is for whoever sent it."""


def clean_name(name) -> str:
    """The category's display name: letters, digits, spaces and NAME_PUNCTUATION only (no markup or links can
    form from it in the page, the model card or bundle.json), at most MAX_NAME characters, "my part" when empty."""
    if name is not None and not isinstance(name, str):
        raise PartError("The name must be text.")
    kept = "".join(c if c.isalnum() or c in NAME_PUNCTUATION else " " for c in (name or ""))
    return " ".join(kept.split())[:MAX_NAME] or "my part"


def fit_megapixels(pictures: list[Path], shape=None, skip_unreadable: bool = False) -> float:
    """Millions of model pixels the detector processes for `pictures` at `shape` (a `PatchCore.input_shape`;
    default: the costliest view a new category's fit may choose, training.choice), from their headers: nothing is
    decoded. A file PIL cannot open raises, or with
    `skip_unreadable` counts nothing (a batch reports it in its row instead)."""
    from PIL import Image

    from training.choice import costliest
    from xai.io import FORMATS
    from xai.patchcore import PatchCore, PatchCoreConfig

    shape = shape or PatchCore(costliest(PatchCoreConfig())).input_shape
    total = 0
    for path in pictures:
        try:
            with Image.open(path, formats=FORMATS) as picture:
                h, w = shape(*picture.size)
        except Exception:  # not a picture PIL can open
            if not skip_unreadable:
                raise
            continue
        total += h * w
    return total / 1e6


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class Parts:
    """Makes and trains the categories of `catalogue.made`, and cancels a training on request."""

    def __init__(self, catalogue):
        self.catalogue = catalogue
        self.store = catalogue.made
        self._stops: dict[str, threading.Event] = {}  # category id -> cancel flag of its classifier training
        self._lock = threading.Lock()

    def trunk(self):
        """The trunk new categories are fitted on (the one the catalogue shares)."""
        return self.catalogue.trunk(TRUNK)

    def fit(self, files, name, caller: str, defects=None) -> dict:
        """A new category from good pictures (and optionally a few defective ones): the /fit JSON."""

        name = clean_name(name)
        limits = self.store.limits
        start = time.perf_counter()
        cid, folder = self.store.new_folder(caller)  # a full server refuses before any upload is read
        try:
            pictures = gather(files, folder / PICTURES, limits.max_pictures, limits.max_fit_bytes)
            megapixels = fit_megapixels(pictures)
            if megapixels > limits.max_fit_megapixels:
                raise PartError(f"These pictures come to {megapixels:.0f} million pixels at the detector's view; one "
                                f"fit may have {limits.max_fit_megapixels:.0f} million. Send fewer pictures, or "
                                "pictures closer to square (each is seen at 320 px on its shorter side).")
            left = limits.max_fit_bytes - sum(p.stat().st_size for p in pictures)  # one budget for all files
            bad = gather(defects, folder / "defects", limits.max_defects, left, "defective pictures") if defects else []
            card = self._fit_in_time(pictures, folder / BUNDLE, name, bad)
            category = self.store.add(cid, name, caller, self.catalogue.load_bundle(folder / BUNDLE))
        except BaseException:
            self.store.discard(folder)
            raise
        finally:
            shutil.rmtree(folder / "defects", ignore_errors=True)  # used once, for the report card
        detector = category.inspector.bundle.metadata.patchcore
        return {"category": cid, "name": name, "n_images": len(pictures), "n_defects": len(bad),
                "threshold": round(float(detector.threshold), 6), "seconds": round(time.perf_counter() - start, 2),
                "report": card, "expires_at": _iso(category.expires_at),
                "train_estimate_s": training_estimate_s(detector.fit["features_s"])}

    def _fit_in_time(self, pictures: list[Path], bundle: Path, name: str, defects: list[Path]) -> dict:
        """training.part.fit_part at low priority, stopped at its next step once it has run max_fit_s."""
        budget = self.store.limits.max_fit_s
        over = threading.Event()
        timer = threading.Timer(budget, over.set)
        timer.start()
        try:
            with stop_when(over), run_errors(PartError):
                return run_low_priority(fit_part, pictures, bundle, name, self.trunk(), defects)
        except Cancelled:
            raise PartError(f"This fit ran past its time budget ({budget:g} s) and was stopped; send fewer or "
                            "smaller pictures.") from None
        finally:
            timer.cancel()

    def train(self, cid, caller: str) -> dict:
        """Train the CNN head of category `cid` on its pictures, then its explanation table: the new report card.
        Only its maker may (an id seen in a shared link is not enough); `cancel(cid, caller)` stops it between two
        steps (the category keeps what it had)."""
        if not isinstance(cid, str):
            raise PartError("The category must be the id that /fit returned.")
        self._check_owner(cid, caller, "train")
        with self._lock:
            if cid in self._stops:
                raise PartError("That category's classifier is already training.")
            self._stops[cid] = threading.Event()
        try:
            return self._train(cid, self._stops[cid])
        finally:
            with self._lock:
                self._stops.pop(cid, None)

    def cancel(self, cid, caller: str) -> bool:
        """Ask the training of `cid` to stop at its next step (its maker only); False when none is running or `cid`
        is no category made here (whether it exists is not told to anyone but its maker)."""
        if not isinstance(cid, str) or cid not in self.store:
            return False
        self._check_owner(cid, caller, "cancel the training of")
        flag = self._stops.get(cid)
        if flag is not None:
            flag.set()
        return flag is not None

    def download(self, cid, caller: str) -> str:
        """Category `cid`'s bundle as a zip file (its maker only)."""
        self._check_owner(cid, caller, "download")
        return self.store.archive(cid)

    def _check_owner(self, cid: str, caller: str, what: str) -> None:
        owner = self.store.get(cid).owner
        if owner and owner != caller:  # categories kept in DEFECT_XAI_CATEGORY_DIR are everyone's (no owner)
            raise PartError(f"Only whoever made this category can {what} it.")

    def _train(self, cid: str, cancel: threading.Event) -> dict:
        category = self.store.get(cid)
        pictures = sorted((category.folder / PICTURES).glob("*"))
        if not pictures:
            raise PartError(f"Category {cid} keeps no pictures to train on (it was not made with /fit).")
        if "classifier_cnn" in category.inspector.heads:
            raise PartError(f"Category {category.name} already has its classifier.")
        work = category.folder / "training"  # trained beside the bundle, swapped in only when complete
        start = time.perf_counter()
        with self.store.pinned(cid):  # neither expires nor is evicted while it trains (it may go right after)
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(category.bundle, work)
            try:
                with stop_when(cancel), run_errors(PartError):
                    card = run_low_priority(train_part, work, pictures, category.name, self.trunk())
                inspector = self.catalogue.load_bundle(work)
                with self.store.locked():
                    shutil.rmtree(category.bundle)
                    work.rename(category.bundle)
                    inspector.bundle.path = category.bundle
                    category.inspector = inspector
            except Cancelled:
                raise PartError("Training cancelled; the category keeps what it had.") from None
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return {"category": cid, "name": category.name, "seconds": round(time.perf_counter() - start, 2),
                "methods": category.inspector.methods(), "report": card}

    def publish(self, cid: str, repo: str, token: str | None, caller: str) -> str:
        """Upload category `cid`'s bundle to `<the token's user>/<repo>` with training.publish (its maker only);
        Markdown for the page. The token is used for this call only and kept nowhere."""
        self._check_owner(cid, caller, "publish")
        if not token:
            raise PartError("Sign in with Hugging Face first (the button above; on a Hugging Face Space only).")
        if not isinstance(repo, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", repo.strip()):
            raise PartError("The repo name may hold letters, digits, '.', '_' and '-' (at most 96).")
        category = self.store.get(cid)
        with run_errors(PartError):
            from huggingface_hub import whoami
            from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

            try:
                user = whoami(token=token)["name"]
            except OfflineModeIsEnabled:
                raise PartError("This server is offline (HF_HUB_OFFLINE is set): nothing can be published from it; "
                                "download the bundle instead.") from None
            except (HfHubHTTPError, OSError, KeyError) as exc:
                raise PartError(f"The Hub did not accept the sign-in: {str(exc).splitlines()[0]}") from None
            url = publish(category.bundle, f"{user}/{repo.strip()}", token=token)
        return f"Published: {url}"
