"""A loaded bundle turned into `detect()`: what the app and the command lines call."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from xai.backbone import Trunk, create_trunk, normalise, preprocess, resize_rgb
from xai.bundle import RETRIEVAL_DIR, Bundle, BundleError, load, load_head, load_patchcore, load_score_model
from xai.bundle_meta import BundleMeta
from xai.fusion import fuse_conv_bn
from xai.heads import HEAD_INPUT_STAGE
from xai.io import ImageInputError, ImageSource, load_image
from xai.reviews import (
    MAX_REVIEWS,
    Review,
    ReviewError,
    Reviews,
    check_sensitivity,
    check_verdict,
    covering_rows,
    flagged_share,
    in_words,
    new_review,
    read_reviews,
    rows_cap,
    sensitivity_threshold,
    write_reviews,
)


@dataclass
class Detection:
    """Verdict for one image: every component's score, the deciding one, the anomaly map, where the time went."""

    label: str
    is_defect: bool | None  # None when the bundle's labels have no normal class
    score: float  # the deciding component's score (PatchCore distance or P(defect))
    threshold: float
    decided_by: str
    scores: dict[str, float]
    thresholds: dict[str, float]
    anomaly_map: np.ndarray | None  # float32 [h, w] in model pixels, the picture's own aspect (PatchCore only)
    image_size: tuple[int, int]
    class_probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    sensitivity: dict | None = None  # the detector's run-time sensitivity (Inspector.sensitivity), when it has one

    def to_json(self) -> dict:
        return {
            "label": self.label, "is_defect": self.is_defect, "score": round(self.score, 6),
            "threshold": round(self.threshold, 6), "decided_by": self.decided_by,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "thresholds": {k: round(v, 6) for k, v in self.thresholds.items()},
            "class_probabilities": {c: {k: round(v, 6) for k, v in p.items()}
                                    for c, p in self.class_probabilities.items()},
            "image_size": list(self.image_size), "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "sensitivity": self.sensitivity,
        }


@dataclass
class Prepared:
    """A decoded picture with its model inputs (`Inspector.prepare`), ready for `detect_batch`."""

    image: Image.Image
    x: torch.Tensor | None  # PatchCore's input [1, 3, h, w] in the picture's own aspect
    head_x: torch.Tensor | None  # the heads' square input, when they cannot share PatchCore's trunk forward
    timings_ms: dict[str, float]  # decode and preprocess


def primary_component(meta: BundleMeta) -> str:
    """The component whose verdict the app shows: PatchCore on one-class data, else the CNN (or ViT) head."""
    comps = meta.components
    one_class = (meta.data or {}).get("layout") == "mvtec"
    order = ["patchcore", "classifier_cnn", "classifier_vit"]
    if not one_class:
        order = ["classifier_cnn", "classifier_vit", "patchcore"]
    for name in order:
        if name in comps:
            return name
    raise BundleError("the bundle has no detector or classifier component")


class Inspector:
    """Runs the bundle's models on one image: one trunk forward shared by every component."""

    def __init__(self, bundle: Bundle, trunk: Trunk | None = None):
        self.bundle = bundle
        meta = bundle.metadata
        if trunk is not None and trunk.name != bundle.trunk_name:
            raise BundleError(f"Bundle {bundle.source} was fitted on the {bundle.trunk_name} trunk, not on the "
                              f"{trunk.name} trunk it was given.")
        comps = bundle.components()
        self.patchcore = load_patchcore(bundle) if "patchcore" in comps else None
        self.score_model = load_score_model(bundle) if self.patchcore is not None else None
        self.heads = {c: load_head(bundle, c) for c in comps if c.startswith("classifier_")}
        for head in self.heads.values():
            fuse_conv_bn(head)  # inference only: halves gradient explainers' cost
            head.to(memory_format=torch.channels_last)
        self.decision = primary_component(meta)
        self.trunk = trunk or create_trunk(bundle.trunk_name)
        expected = meta.trunk and meta.trunk.weights_sha256
        if expected and self.trunk.weights_sha256 != expected:
            raise BundleError(
                f"Bundle {bundle.source} was fitted on different {bundle.trunk_name} weights than the installed "
                "ones; install the package version recorded in its bundle.json or refit the bundle."
            )
        prep = meta.preprocessing
        if prep is None or prep.input_size is None:
            raise BundleError(f"Bundle {bundle.source} records no input size; re-run a training script on it.")
        self.input_size = int(prep.input_size)
        self.mean, self.std = prep.mean or (0.5, 0.5, 0.5), prep.std or (0.5, 0.5, 0.5)
        self.labels: list[str] = ["good", "defect"] if meta.labels is None else meta.labels
        normal = meta.normal_label
        self.normal_index = self.labels.index(normal) if normal in self.labels else None
        self.thresholds = {c: float(spec.threshold) for c, spec in meta.components.items()}
        self._context = None
        self._reviewing = threading.Lock()  # one review of this category at a time
        self.reviews, self._sensitivity = Reviews(), None
        if self.patchcore is not None:
            self.reviews = read_reviews(meta.patchcore.reviews, bundle.path)
            if self.reviews.n_rows:
                self.patchcore.extend_index(self.reviews.rows)
            self._apply_sensitivity()

    def explain_context(self):
        """What the explainers need from this bundle (built once, cached on the inspector)."""
        if self._context is None:
            from xai.explainers import ExplainContext
            from xai.explainers.retrieval import RetrievalIndex

            retrieval = None
            if self.patchcore is not None and (self.bundle.path / RETRIEVAL_DIR).is_dir():
                names = self.bundle.metadata.patchcore.bank_images or []
                retrieval = RetrievalIndex(self.bundle.path / RETRIEVAL_DIR, names)
            self._context = ExplainContext(self.trunk, self.heads, self.patchcore, self.labels, self.normal_index,
                                           self.input_size, tuple(self.mean), tuple(self.std), retrieval,
                                           self.score_model)
        return self._context

    def methods(self) -> list[str]:
        """Explanation methods this bundle supports: each method says what it needs (`Explainer.applies_to`)."""
        from xai.explainers import METHODS

        context = self.explain_context()
        return [name for name, cls in METHODS.items() if cls.applies_to(context)]

    def explain(self, source: ImageSource, method: str, target: int | None = None, **params):
        """Decode `source` and explain it with `method` (see xai.explainers.METHODS)."""
        image = load_image(source)
        return self.explain_input(self.model_input(image, self.component_of(method)), method, target, **params)

    def explain_input(self, x: torch.Tensor, method: str, target: int | None = None, **params):
        """Explain an already prepared batch (`model_input` for the method's component): decode and resize once
        when several methods follow."""
        from xai.explainers import create_explainer

        return create_explainer(method, self.explain_context(), **params).explain(x, target)

    @staticmethod
    def component_of(method: str) -> str:
        """The component a method explains: "patchcore" or a classifier head."""
        from xai.explainers import METHODS

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        return METHODS[method].component

    def model_input(self, image: Image.Image, component: str) -> torch.Tensor:
        """The normalised batch of one picture for `component`: PatchCore sees the picture in its own aspect
        (`PatchCore.input_shape`), the classifier heads a square input_size picture."""
        if component == "patchcore" and self.patchcore is not None:
            shape = self.patchcore.input_shape(*image.size)
            return normalise(resize_rgb(image, shape)[None], self.mean, self.std)
        return self.preprocess(image)

    @property
    def threshold(self) -> float:
        return self.thresholds[self.decision]

    @classmethod
    def from_source(cls, source: str, trunk: Trunk | None = None) -> Inspector:
        return cls(load(source), trunk)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess([image], self.input_size, self.mean, self.std)

    @torch.no_grad()
    def detect(self, source: ImageSource) -> Detection:
        """Decode `source`, run every component and apply the deciding component's threshold. The trunk runs once
        when PatchCore's input is the heads' square one, else once for each."""
        prepared = self.prepare(source)
        if isinstance(prepared, ImageInputError):
            raise prepared
        return self.detect_prepared([prepared])[0]

    @torch.no_grad()
    def detect_batch(self, sources: Sequence[ImageSource | Prepared]) -> list[Detection | ImageInputError]:
        """`detect` for many pictures (sources, or what `prepare` made of them), with one trunk forward and one
        nearest-neighbour search per group of pictures that share a model input shape: the same verdicts and maps
        as one at a time. A picture that cannot be read is its ImageInputError, in its place: never the end of the
        batch. Each picture's timings are its own decoding and preparing and its share of its group's work."""
        prepared = [s if isinstance(s, Prepared) else self.prepare(s) for s in sources]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(prepared):
            if isinstance(item, Prepared):
                groups.setdefault(tuple(item.x.shape) if item.x is not None else (), []).append(i)
        results: list[Detection | ImageInputError] = list(prepared)
        for members in groups.values():
            for i, detection in zip(members, self.detect_prepared([prepared[i] for i in members])):
                results[i] = detection
        return results

    def prepare(self, source: ImageSource) -> Prepared | ImageInputError:
        """Decode `source` and make its model inputs (the CPU work before the model, which a batch engine does in
        a thread of its own); an unreadable picture comes back as its ImageInputError."""
        start = time.perf_counter()
        try:
            image = load_image(source)
        except ImageInputError as exc:
            return exc
        decoded = time.perf_counter()
        x = self.model_input(image, "patchcore") if self.patchcore is not None else None
        head_x = self.preprocess(image) if self.heads and (x is None or not self._shares_trunk(x)) else None
        return Prepared(image, x, head_x, {"decode": (decoded - start) * 1000.0,
                                           "preprocess": (time.perf_counter() - decoded) * 1000.0})

    @torch.no_grad()
    def detect_prepared(self, prepared: list[Prepared]) -> list[Detection]:
        """Every component on prepared pictures that share PatchCore's input shape, as one batch."""
        n = len(prepared)
        shared: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            shared[name] = (now - clock) * 1000.0 / n
            clock = now

        scores: list[dict[str, float]] = [{} for _ in prepared]
        probabilities: list[dict[str, dict[str, float]]] = [{} for _ in prepared]
        maps: list[np.ndarray | None] = [None] * n
        if self.patchcore is not None:
            pc = self.patchcore
            x = torch.cat([p.x for p in prepared])
            stages = pc.stage_outputs(self.trunk, x)
            lap("trunk")
            embedding = pc.embed(stages, x)
            lap("features")
            patch_scores = pc.patch_scores(embedding)
            lap("knn")
            amap_t = pc.anomaly_map(patch_scores)
            for k, value in enumerate(pc.image_score(amap_t).tolist()):
                scores[k]["patchcore"] = float(value)
                maps[k] = amap_t[k].numpy().astype(np.float32)
            lap("map")
        if self.heads:
            # the heads read stage 4 of a square picture: shared with PatchCore's forward when it saw the same
            if prepared[0].head_x is None:
                head_input = stages[HEAD_INPUT_STAGE]
            else:
                head_x = torch.cat([p.head_x for p in prepared])
                head_input = self.trunk(head_x, upto=HEAD_INPUT_STAGE)[HEAD_INPUT_STAGE]
                lap("head_trunk")
            for name, head in self.heads.items():
                for k, probs in enumerate(head(head_input).softmax(-1)):
                    probabilities[k][name] = {label: float(p) for label, p in zip(self.labels, probs)}
                    if self.normal_index is not None:
                        scores[k][name] = 1.0 - float(probs[self.normal_index])
                lap(name)
        detections = []
        for k, item in enumerate(prepared):
            timings = {**item.timings_ms, **shared}
            timings["total"] = sum(timings.values())
            label, is_defect = self._verdict(scores[k], probabilities[k])
            detections.append(Detection(label, is_defect, scores[k].get(self.decision, float("nan")),
                                        self.threshold, self.decision, scores[k], self.thresholds, maps[k],
                                        item.image.size, probabilities[k], timings, self._sensitivity))
        return detections

    def _shares_trunk(self, x: torch.Tensor) -> bool:
        """Whether PatchCore's trunk forward is the heads' too: a square input_size picture."""
        return (tuple(x.shape[-2:]) == (self.input_size, self.input_size)
                and max(self.patchcore.config.layers) >= HEAD_INPUT_STAGE)

    def _verdict(self, scores: dict[str, float], probabilities: dict[str, dict[str, float]]) -> tuple[str, bool | None]:
        """Binary: the deciding score against its threshold. Multi-class: the head's top class."""
        decider = self.decision
        if decider in probabilities and (len(self.labels) > 2 or self.normal_index is None):
            label = max(probabilities[decider], key=probabilities[decider].get)
            return label, (None if self.normal_index is None else label != self.labels[self.normal_index])
        is_defect = scores[decider] > self.thresholds[decider]
        normal = self.labels[self.normal_index] if self.normal_index is not None else "good"
        defect = next((lbl for lbl in self.labels if lbl != normal), "defect") if len(self.labels) == 2 else "defect"
        return (defect if is_defect else normal), is_defect

    # -- reviews and sensitivity (xai.reviews) ---------------------------------------------------
    @property
    def fitted_threshold(self) -> float:
        """The detector's threshold as its fit stored it."""
        return float(self.bundle.metadata.patchcore.threshold)

    def good_scores(self) -> list[float]:
        """Scores of good pictures the bank had not seen: the fit's held-out ones and those reviewed good."""
        stored = (self.bundle.metadata.patchcore.calibration or {}).get("good_scores", [])
        return [float(s) for s in stored if isinstance(s, (int, float))] + self.reviews.good_scores()

    def sensitivity(self) -> dict | None:
        """The detector's operating point: the share of good parts its threshold flags (modelled), in words, and
        whether a user set it; None without a detector."""
        return self._sensitivity

    def set_sensitivity(self, share: float | None) -> dict:
        """Flag `share` of good parts from now on (None: back to the fit's threshold); not saved until
        `save_reviews`."""
        self._need_detector()
        with self._reviewing:
            if share is not None:
                sensitivity_threshold(self.good_scores(), check_sensitivity(share))  # refused before any change
            self.reviews.sensitivity = None if share is None else float(share)
            self._apply_sensitivity()
        return self._sensitivity

    def review(self, source: ImageSource, verdict: str, name: str | None = None) -> Review:
        """Learn from one reviewed picture without a refit: "good" adds the patches that cover it to the bank,
        "defect" keeps it as labelled evidence (xai.reviews). Not saved until `save_reviews`."""
        check_verdict(verdict)
        self._need_detector()
        image = load_image(source)
        with self._reviewing:
            if len(self.reviews.entries) >= MAX_REVIEWS:
                raise ReviewError(f"This category keeps {MAX_REVIEWS} reviews at most; undo some, or refit it.")
            pc = self.patchcore
            with torch.no_grad():  # one trunk pass: the scores before and after are searches of the same patches
                embedding = pc.embed_image(self.trunk, self.model_input(image, "patchcore"))
            distances = pc.nearest_distances(embedding)
            before = self._image_score(distances)
            added = np.zeros((0, pc.memory_bank.shape[1]), np.float32)
            if verdict == "good":
                added = self._covering(embedding, distances)
                cap = rows_cap(len(pc.memory_bank))
                if self.reviews.n_rows + len(added) > cap:
                    raise ReviewError(
                        f"This category's bank has taken {self.reviews.n_rows:,} patches from reviewed pictures and "
                        f"this one needs {len(added):,} more; it holds {cap:,} at most. Refit the category with "
                        "the pictures reviewed good among its good pictures, or undo some reviews.")
                if len(added):
                    pc.extend_index(added)
            try:
                after = self._image_score(pc.nearest_distances(embedding)) if len(added) else before
            except BaseException:  # the index back as the recorded reviews make it: no untracked rows
                pc.rebuild_index(self.reviews.rows)
                raise
            entry = new_review(verdict, before, after, self.thresholds["patchcore"], len(added), image.size, name)
            rows = added if self.reviews.rows is None else np.concatenate([self.reviews.rows, added])
            self.reviews = Reviews([*self.reviews.entries, entry], rows if len(rows) else None,
                                   self.reviews.sensitivity)
            self._apply_sensitivity()
        return entry

    def undo_review(self, review_id: str) -> Review:
        """Forget review `review_id`: the index is rebuilt from the fitted bank and the other reviews' rows, so
        every score is exactly what it was without it."""
        self._need_detector()
        if not isinstance(review_id, str):
            raise ReviewError("The review id must be the feedback_id a review returned.")
        with self._reviewing:
            rest, entry = self.reviews.without(self.reviews.find(review_id))
            if entry.rows:
                self.patchcore.rebuild_index(rest.rows)
            self.reviews = rest
            self._apply_sensitivity()
        return entry

    def save_reviews(self) -> None:
        """Write the reviews and the sensitivity into the bundle's folder (and its loaded bundle.json)."""
        self._need_detector()
        with self._reviewing:
            cap = rows_cap(len(self.patchcore.memory_bank))
            write_reviews(self.bundle.path, self.reviews, cap)
            self.bundle.metadata.patchcore.reviews = self.reviews.to_meta(cap)

    def _need_detector(self) -> None:
        if self.patchcore is None:
            raise ReviewError(f"{self.bundle.category} has no anomaly detector: reviews teach the detector's bank.")

    def _image_score(self, distances: torch.Tensor) -> float:
        """The detector's image score from one picture's nearest-bank distances [1, h, w] (as detect scores it)."""
        pc = self.patchcore
        return float(pc.image_score(pc.anomaly_map(pc.scale_borders(distances)))[0])

    def _covering(self, embedding: torch.Tensor, distances: torch.Tensor) -> np.ndarray:
        """The rows of one picture's `embedding` [1, D, h, w] (at `distances` [1, h, w] from the bank) that bring it
        to a typical good picture's score (xai.reviews)."""
        from xai.patchcore import border_factors

        pc = self.patchcore
        factors = border_factors(pc.border_scale, tuple(distances.shape[-2:])).flatten().numpy()
        good = self.good_scores()
        target = float(np.median(good)) if good else 0.5 * self.thresholds["patchcore"]
        rows = pc.flatten(embedding)
        return rows[covering_rows(rows, distances.flatten().numpy(), factors, target)]

    def _apply_sensitivity(self) -> None:
        """The detector's threshold from the sensitivity (or the fit's), and the summary /detect and /info show."""
        good = self.good_scores()
        share = self.reviews.sensitivity
        if share is not None and len(good) < 2:  # an undo took the good scores it was read from: the fit's again
            self.reviews.sensitivity = share = None
        threshold = self.fitted_threshold if share is None else sensitivity_threshold(good, share)
        self.thresholds = {**self.thresholds, "patchcore": threshold}
        flagged = flagged_share(good, threshold) if share is None else share
        defects = [e for e in self.reviews.entries if e.verdict == "defect"]
        self._sensitivity = {
            "share": None if flagged is None else round(flagged, 4), "in_words": in_words(flagged),
            "set_by": "fit" if share is None else "user", "threshold": round(threshold, 6),
            "fitted_threshold": round(self.fitted_threshold, 6), "good_scores": len(good),
            "reviewed_good": len(self.reviews.good_scores()), "reviewed_defects": len(defects),
            "reviewed_defects_flagged": sum(e.score_before > threshold for e in defects),
            "bank_rows_added": self.reviews.n_rows,
        }
