"""What the Space serves, without Gradio: the categories loaded from the configured bundles, and detect / explain
/ info as images plus JSON. The handlers only wire these to components and endpoints.

A source that fails to load is kept with its reason, so the page and /info name it while the other
categories keep working; nothing is substituted for it.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from space.categories import ID_PATTERN, CategoryLimits, CategoryStore, MemoryCategories
from space.kept_categories import KeptCategories
from space.render import evidence
from xai.backbone import MissingWeightsError
from xai.bundle import BundleError, load
from xai.errors import UserError, redact
from xai.explainers import METHODS, captions, slow_methods
from xai.inspector import Inspector
from xai.io import ImageSource, load_image
from xai.metrics import EXPLANATION_METRICS
from xai.render import overlay, verdict_overlay

MAX_OVERLAY_SIDE = 512  # returned pictures: enough to see the defect, small enough to travel fast

MAX_METHODS = 6  # explanation methods in one page request (each at most once) ...
MAX_SLOW = 2  # ... of which slow ones
DETECTION_COLUMNS = ["component", "image_auroc", "pixel_auroc", "aupro", "f1", "accuracy", "ms_per_image"]
QUALITY_COLUMNS = ["method", *EXPLANATION_METRICS, "sanity_check"]
LOG = logging.getLogger("defect_xai")
LEARNED_CAPTION = "What the CNN head has learned"
MAX_LEARNED_PIXELS = 4_000_000
RANDOMISATION_LIMIT = 0.5  # a map that stays this similar when the weights are random does not explain the model


class ServiceError(UserError, ValueError):
    """A request the service cannot answer; the message is meant for the person or script that sent it."""


class Catalogue:
    """Categories by name, the sources that failed and why, and the categories made at run time (`made`, by id).
    One trunk in memory per trunk name, shared by every category built on it."""

    def __init__(self, categories: CategoryLimits | None = None, category_dir: str | Path | None = None):
        self.inspectors: dict[str, Inspector] = {}
        self.failures: dict[str, str] = {}
        self.made: CategoryStore = (MemoryCategories(categories) if category_dir is None
                                    else KeptCategories(categories, category_dir, load=self.load_bundle))
        self._trunks: dict[str, object] = {}  # trunk name -> the one loaded
        # one slow explanation at a time, whatever the number of explanation workers: the others stay free for
        # fast methods, so another visitor's anomaly map never waits behind a queue of SHAP runs
        self.slow_lane = threading.Semaphore(1)
        self._trunk_lock = threading.Lock()

    @classmethod
    def from_sources(cls, sources: str, categories: CategoryLimits | None = None,
                     category_dir: str | Path | None = None) -> Catalogue:
        """Load every comma-separated source (folder or Hub repo id) once; a failure is recorded, not raised."""
        catalogue = cls(categories, category_dir)
        for source in [s.strip() for s in sources.split(",") if s.strip()]:
            try:
                catalogue.add_source(source)
            except Exception as exc:  # a bundle is data from elsewhere: whatever breaks, it breaks alone
                if not isinstance(exc, (BundleError, MissingWeightsError, OSError, ValueError, KeyError)):
                    LOG.exception("loading %s failed", source)
                catalogue.failures[source] = str(exc) or type(exc).__name__
        return catalogue

    def add_source(self, source: str, name: str | None = None) -> str:
        """Load one source (at start, or while the app serves: a category built in the background) and return its
        name. The dict is replaced, not changed, so a request iterating the old one is never disturbed."""
        inspector = self.load_bundle(source)
        name = name or inspector.bundle.category
        if name in self.inspectors:
            name = f"{name} ({source})"
        self.inspectors = {**self.inspectors, name: inspector}
        return name

    def load_bundle(self, source: str | Path) -> Inspector:
        """An inspector over the bundle at `source`, on the shared trunk of its name."""
        bundle = load(source)
        return Inspector(bundle, self.trunk(bundle.trunk_name))

    def trunk(self, name: str):
        """The trunk called `name`, loaded once and shared by every category built on it."""
        from xai.backbone import create_trunk

        with self._trunk_lock:
            if name not in self._trunks:
                self._trunks[name] = create_trunk(name)
            return self._trunks[name]

    @property
    def categories(self) -> list[str]:
        return list(self.inspectors)

    def choices(self, own: list[str] | None = None) -> list[tuple[str, str]]:
        """(label, value) for a category list: the server's categories, the shared ones made at run time (with
        DEFECT_XAI_CATEGORY_DIR), and the caller's own (`own` ids) that are still held."""
        found = [(name, name) for name in self.inspectors]
        shared = self.made.shared()
        found += [(f"{name} (made here)", cid) for cid, name in shared.items()]
        held = {c.id: c for c in self.made.held()}
        found += [(f"{held[cid].name} (yours)", cid) for cid in own or [] if cid in held and cid not in shared]
        return found

    def examples(self) -> list[list[str]]:
        """[[picture path, category], ...] from every loaded bundle's stored examples."""
        return [[str(path), name] for name, ins in self.inspectors.items() for path, _ in ins.bundle.examples()]

    def get(self, category: str | None) -> Inspector:
        if isinstance(category, str) and category not in self.inspectors \
                and (ID_PATTERN.fullmatch(category) or category in self.made):
            return self.made.get(category).inspector
        if not self.inspectors:
            raise ServiceError("No category is loaded: " + "; ".join(f"{s}: {r}" for s, r in self.failures.items()))
        if not category:
            return next(iter(self.inspectors.values()))
        if category not in self.inspectors:
            raise ServiceError(f"Unknown category {category!r}; choose one of {', '.join(self.inspectors)}.")
        return self.inspectors[category]

    # -- endpoints ----------------------------------------------------------------------------------
    def detect(self, image: ImageSource, category: str | None) -> tuple[Image.Image, dict]:
        """Overlay of the anomaly map (or the image itself for classifier-only bundles) and the verdict JSON."""
        inspector = self.get(category)
        picture = load_image(image)
        result = inspector.detect(picture)
        picture = _shrink(picture)
        payload = {"category": inspector.bundle.category, **result.to_json()}
        if result.anomaly_map is None:
            return picture, payload
        return verdict_overlay(picture, result.anomaly_map, inspector.thresholds["patchcore"],
                               result.scores["patchcore"]), payload

    def explain(self, image: ImageSource, category: str | None, method: str) -> tuple[Image.Image, dict]:
        """One method's overlay and JSON (the public /explain)."""
        panels, _, payloads = self.explain_many(image, category, [method])
        return panels[0][0], payloads[method]

    def explain_many(self, image: ImageSource, category: str | None, methods: list[str],
                     on_method: Callable[[int, int, str], None] | None = None) -> tuple[list, list, dict]:
        """Several methods side by side for the page: [(overlay, caption)], the supporting pictures (SHAP's plot,
        the retrieval trace's neighbours) as [(picture, caption)], and every method's JSON by name. The image
        is decoded once, and prepared once per component the methods explain."""
        inspector = self.get(category)
        methods = self.check_methods(methods)
        for method in methods:
            self._check_method(inspector, method)
        picture = load_image(image)
        shown = _shrink(picture)
        inputs: dict[str, object] = {}  # one prepared input per component the methods explain
        panels, supporting, payloads = [], [], {}
        for i, method in enumerate(methods):
            if on_method is not None:
                on_method(i, len(methods), method)
            component = inspector.component_of(method)
            if component not in inputs:
                inputs[component] = inspector.model_input(picture, component)
            with self.slow_lane if METHODS[method].slow else contextlib.nullcontext():
                exp = inspector.explain_input(inputs[component], method)
            heat = np.abs(exp.heatmap) if METHODS[method].signed else exp.heatmap  # show evidence either way
            panels.append((overlay(shown, heat), f"{method} · {exp.ms:.0f} ms — {METHODS[method].caption}"))
            supporting += evidence(exp, shown, inspector.bundle.path)
            payloads[method] = {"category": inspector.bundle.category, "caption": METHODS[method].caption,
                                **exp.to_json()}
        return panels, supporting, payloads

    @staticmethod
    def check_methods(methods) -> list[str]:
        """The requested methods, each once and in order, within the per-request caps (a list of 10,000 "shap"
        would otherwise hold the explain worker for hours)."""
        if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
            raise ServiceError("Methods must be a list of method names.")
        unique = list(dict.fromkeys(methods))
        if not unique:
            raise ServiceError("Pick at least one explanation method.")
        if len(unique) > MAX_METHODS:
            raise ServiceError(f"Pick at most {MAX_METHODS} explanation methods at once.")
        slow = slow_methods()
        if sum(m in slow for m in unique) > MAX_SLOW:
            raise ServiceError(f"Pick at most {MAX_SLOW} of the slow methods ({', '.join(slow)}) at once.")
        return unique

    @staticmethod
    def _check_method(inspector: Inspector, method: str) -> None:
        if method not in inspector.methods():
            raise ServiceError(f"{inspector.bundle.category} cannot run {method!r}; "
                               f"it supports {', '.join(inspector.methods())}.")

    def report_card(self, category: str | None) -> tuple[list[list], list[list]]:
        """The category's stored evaluation as two tables (rows of cells): detection per component, and
        explanation quality per method. Empty tables when the bundle has not been evaluated."""
        try:
            metrics = self.get(category).bundle.metadata.metrics or {}
        except UserError:  # no category, an unknown one, or one made here that has gone
            metrics = {}
        detection = [[name, *(m.get(k) for k in DETECTION_COLUMNS[1:])]
                     for name, m in metrics.items() if isinstance(m, dict) and "image_auroc" in m]
        table = metrics.get("explanations", {})
        quality = [[name, *(m.get(k) for k in QUALITY_COLUMNS[1:-1]), _sanity(m)]
                   for name, m in table.get("methods", {}).items()]
        quality += [[f"{name} (control: a Sobel edge map, no model)", *(m.get(k) for k in QUALITY_COLUMNS[1:-1]),
                     "control: what a map that ignores the weights scores"]
                    for name, m in table.get("controls", {}).items()]
        return detection, quality

    def learned(self, category: str | None) -> tuple[Image.Image, str] | None:
        """The picture of what the category's CNN head has learned (stored at training) and its caption; None
        when it has none."""
        try:
            inspector = self.get(category)
        except UserError:
            return None
        facts = _learned_facts(inspector)
        path = inspector.bundle.inside(str(facts.get("file", ""))) if facts else None
        if path is None or not path.is_file():
            return None
        try:
            with Image.open(path, formats=["PNG"]) as stored:  # bundle data: PNG only, and of a sane size
                if stored.width * stored.height > MAX_LEARNED_PIXELS:
                    return None
                picture = stored.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):  # unreadable: the card goes on without it
            LOG.warning("the feature visualisation of %s cannot be read", inspector.bundle.category)
            return None
        return picture, (f"{LEARNED_CAPTION}: a picture optimised to raise '{facts.get('class')}' "
                         f"(p = {facts.get('probability')}) and the training-picture patches it responds to most "
                         f"(computed once at training, {facts.get('seconds')} s)")

    def public_failures(self) -> dict[str, str]:
        """The sources that failed, each with its reason, as the public may see them: no server paths (the full
        text is in the server log)."""
        return {public_source(source): redact(reason) for source, reason in self.failures.items()}

    def info(self) -> dict:
        import torch

        from xai import __version__

        return {
            "categories": {name: {"source": public_source(ins.bundle.source), "components": ins.bundle.components(),
                                  "labels": ins.labels, "methods": ins.methods(),
                                  "data": ins.bundle.metadata.data or {},
                                  "metrics": ins.bundle.metadata.metrics or {},
                                  "detector_settings": _chosen_settings(ins),
                                  "sensitivity": ins.sensitivity(),
                                  "feature_visualisation": ({"caption": LEARNED_CAPTION, **_learned_facts(ins)}
                                                            if _learned_facts(ins) else None)}
                           for name, ins in self.inspectors.items()},
            "failed": self.public_failures(),
            "shared_categories": self.made.shared(),
            "methods": captions(),
            "versions": {"defect_xai": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }


def _chosen_settings(inspector: Inspector) -> dict | None:
    """The detector's view and smoothing, and how its fit chose them (training.choice: every candidate's score);
    None without a detector."""
    if inspector.patchcore is None:
        return None
    cfg = inspector.patchcore.config
    choice = inspector.bundle.metadata.patchcore.choice
    return {"short_side": cfg.short_side, "enlarge": cfg.enlarge, "sigma": cfg.sigma,
            "choice": choice if isinstance(choice, dict) else None}


def _learned_facts(inspector: Inspector) -> dict:
    head = inspector.bundle.metadata.head("classifier_cnn")
    facts = None if head is None else head.feature_visualisation
    return facts if isinstance(facts, dict) else {}


def public_source(source: str) -> str:
    """A source as the public may see it: a Hub id as it is, a local folder by its name only."""
    return redact(source) if source.startswith("/") else source


def _sanity(row: dict) -> str:
    """The table's last column: the randomisation check, or for a model of the score its fidelity."""
    if isinstance(row.get("fidelity"), dict):
        here, fitted = row["fidelity"], row.get("calibration_fidelity") or {}
        return (f"explains a model of the score: R² {here.get('r2')}, same verdict {here.get('verdict_agreement')} "
                f"here; R² {fitted.get('r2')}, same verdict {fitted.get('verdict_agreement')} on unseen calibration "
                "pictures")
    similarity = row.get("randomization_similarity")
    cases = f" (on {row['n_images']} of the pictures: a slow method)" if "n_images" in row else ""
    if similarity is None:
        return "undefined (a map was constant)" + cases
    return ("passes" if similarity <= RANDOMISATION_LIMIT else "FAILS: map barely depends on the weights") + cases


def _shrink(picture: Image.Image) -> Image.Image:
    """The picture at most MAX_OVERLAY_SIDE on its longer side (aspect kept)."""
    if max(picture.size) <= MAX_OVERLAY_SIDE:
        return picture
    shrunk = picture.copy()
    shrunk.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE), Image.BILINEAR)
    return shrunk
