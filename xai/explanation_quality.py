"""How far each explanation method deserves belief, on defect pictures with known masks (the table that
`training.evaluate_explanations` and a report card store; keys in docs/contracts.md).

Per method, averaged over the pictures: pointing game (peak inside the mask dilated by 8 px at 224), energy in
mask, heatmap AUROC, RISE deletion and insertion AUC (16 steps; removed pixels take the values of the closest
good training image, so deleting a defect means showing a good part there, or of the image blurred with
sigma 10 px for bundles without retrieval data; the score is the classifier's probability of the explained
class, or PatchCore's score relative to its threshold for bundles without a classifier), the
model-randomisation check (Spearman correlation with the same method on heads re-initialised as their
architectures initialise them and a noise memory bank; low is good; averaged over the images where both maps
vary, null where none does, e.g. SHAP when the random head's probability saturates) and median ms. One control
row, `controls.edge_control`, scores a Sobel edge map of the picture (no model at all) the same way, so each
method's figures can be read against what "barely depends on the weights" earns. A method that explains a small
model of the score (`shap_features`) has no map to score: its row gives the model's fidelity on these pictures
(R² against the detector's score, RMSE, same verdict, and the share it follows as closely as unseen calibration
pictures) beside the one measured at fit time, and its ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xai.explainers import METHODS, ExplainContext, create_explainer
from xai.explainers.integrated_gradients import baseline_for
from xai.explainers.retrieval import nearest_good_image
from xai.inspector import Inspector
from xai.metrics import (
    EXPLANATION_METRICS,
    curve_auc,
    energy_in_mask,
    fidelity,
    heatmap_auroc,
    perturbation_curve,
    pointing_game,
    rank_correlation,
)

CONTROL = "edge_control"
Score = Callable[[np.ndarray], np.ndarray]  # normalised batch [N, 3, H, W] -> one score a picture


@dataclass
class Case:
    """One defective picture to explain, and its ground-truth mask at any model shape (h, w)."""

    picture: Image.Image
    mask: Callable[[tuple[int, int]], np.ndarray]


@dataclass
class ModelView:
    """One case as one component's model sees it: its input [1, 3, h, w], the mask at that shape and the deletion
    reference [3, h, w]."""

    x: torch.Tensor
    mask: np.ndarray
    reference: np.ndarray

    @property
    def image(self) -> np.ndarray:
        return self.x[0].numpy()


def curve_component(inspector: Inspector) -> str:
    """The component whose score the deletion/insertion curves follow (and whose input the control sees): the
    first classifier head, else the detector."""
    return next((c for c in ("classifier_cnn", "classifier_vit") if c in inspector.heads), "patchcore")


def curve_score(inspector: Inspector) -> Score:
    """The score deletion/insertion curves follow: the head's probability of the defect class (the batch resized to
    its square input; PatchCore methods perturb the picture in its own aspect), else PatchCore's score over its
    threshold."""
    context = inspector.explain_context()
    component = curve_component(inspector)
    if component == "patchcore":
        pc, threshold = inspector.patchcore, inspector.thresholds["patchcore"]

        def patchcore_score(batch: np.ndarray) -> np.ndarray:
            _, scores = pc(inspector.trunk, torch.from_numpy(batch).float())
            return scores.numpy() / threshold
        return patchcore_score
    model, size = context.classifier(component), (inspector.input_size, inspector.input_size)
    target = 1 - inspector.normal_index if inspector.normal_index is not None else 0

    def classifier_score(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return model(x).softmax(-1)[:, target].numpy()
    return classifier_score


def deletion_reference(context: ExplainContext, x: torch.Tensor) -> np.ndarray:
    """What deleted pixels of the model input `x` [1, 3, h, w] show: the closest good training image (retrieval's
    thumbnails), or the picture blurred (sigma 10 px) for a bundle without them; [3, h, w]."""
    reference = nearest_good_image(context, x) if context.retrieval is not None else baseline_for(x, "blur")
    return reference[0].numpy()


def edge_control(x: torch.Tensor) -> np.ndarray:
    """The control row: a Sobel edge map of the picture [1, 3, h, w] itself, which ignores the model entirely.
    Scored like the methods, it shows what a map that does not depend on the weights earns on each metric (its
    randomisation similarity is 1 by construction)."""
    import cv2

    gray = x[0].mean(0).numpy().astype(np.float32)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))


def map_metrics(heat: np.ndarray, random_heat: np.ndarray, view: ModelView, score: Score) -> dict[str, float | None]:
    """One map's figures on one case: against its mask, along the score's deletion/insertion curves, and against
    the randomised model's map."""
    return {
        "pointing_game": pointing_game(heat, view.mask),
        "energy_in_mask": energy_in_mask(heat, view.mask),
        "heatmap_auroc": heatmap_auroc(heat, view.mask),
        "deletion_auc": curve_auc(perturbation_curve(score, view.image, view.reference, heat)),
        "insertion_auc": curve_auc(perturbation_curve(score, view.image, view.reference, heat, insert=True)),
        "randomization_similarity": rank_correlation(heat, random_heat),
    }


class MethodRecords:
    """The figures each method (and the control) earns case by case, with the explainers that make its maps: over
    the bundle's models and over their randomised copies."""

    def __init__(self, inspector: Inspector, methods: list[str], control: bool):
        self.inspector = inspector
        self.context = context = inspector.explain_context()
        random_context = context.randomised(seed=0)
        self.score = curve_score(inspector)
        self.explainers = {m: create_explainer(m, context, **({"plot": False} if METHODS[m].surrogate else {}))
                           for m in methods}
        self.randomised = {m: create_explainer(m, random_context) for m in methods}
        self.values: dict[str, dict[str, list]] = {m: {} for m in [*methods, *([CONTROL] if control else [])]}
        self.surrogates: dict[str, list[tuple]] = {}  # per surrogate method: (its output, the true score, follows)

    def add_case(self, case: Case, index: int, slow_cases: int | None) -> None:
        """Every method's figures on `case` (the `index`th): the slow ones only on the first `slow_cases`."""
        views: dict[str, ModelView] = {}  # per component
        for method in self.values:
            if slow_cases is not None and index >= slow_cases and method != CONTROL and METHODS[method].slow:
                continue
            component = curve_component(self.inspector) if method == CONTROL else self.inspector.component_of(method)
            if component not in views:
                x = self.inspector.model_input(case.picture, component)
                views[component] = ModelView(x, case.mask(tuple(x.shape[-2:])), deletion_reference(self.context, x))
            self.add(method, views[component])

    def add(self, method: str, view: ModelView) -> None:
        """One method's figures on one case; a model of the score records its output beside the true score."""
        if method == CONTROL:
            start = time.perf_counter()
            heat = edge_control(view.x)
            ms, random_heat = (time.perf_counter() - start) * 1000.0, edge_control(view.x)
        else:
            exp = self.explainers[method].explain(view.x)
            if self.explainers[method].surrogate:  # a model of the score: its fidelity, not a map, is what to check
                self.values[method].setdefault("ms", []).append(exp.ms)
                self.surrogates.setdefault(method, []).append(
                    (exp.extras["output"], exp.extras["score"], exp.extras["follows_this_picture"]))
                return
            heat, ms, random_heat = exp.heatmap, exp.ms, self.randomised[method].explain(view.x).heatmap
        for key, value in {**map_metrics(heat, random_heat, view, self.score), "ms": ms}.items():
            if value is not None:
                self.values[method].setdefault(key, []).append(value)

    def rows(self) -> dict[str, dict]:
        """Each method's row: its figures summarised, and a model of the score's fidelity here and at fit time."""
        out = {method: {k: _summary(k, figures.get(k, [])) for k in EXPLANATION_METRICS}
               for method, figures in self.values.items()}
        for method, records in self.surrogates.items():
            output, score, follows = np.array(records, dtype=float).T
            out[method]["fidelity"] = {**fidelity(output, score, self.inspector.thresholds["patchcore"]),
                                       "follows": round(float(follows.mean()), 4), "data": "these pictures"}
            out[method]["calibration_fidelity"] = self.context.score_model.fidelity
        return out


def evaluate_methods(inspector: Inspector, cases: list[Case], methods: list[str], control: bool = True,
                     slow_cases: int | None = None,
                     progress: Callable[[list[Case], str], Iterable[Case]] | None = None) -> dict:
    """The contract JSON for `methods` over `cases`, plus (`control`) the edge-detector control under "controls";
    with `slow_cases`, the slow methods are measured on the first that many cases only (their row says how many).
    `progress(cases, label)`, where given, wraps the loop over the cases (a command line's progress bar)."""
    records = MethodRecords(inspector, methods, control)
    for index, case in enumerate(cases if progress is None else progress(cases, "explanations")):
        records.add_case(case, index, slow_cases)
    out = records.rows()
    if slow_cases is not None:
        for method in methods:
            if METHODS[method].slow:
                out[method]["n_images"] = min(slow_cases, len(cases))
    result = {"n_images": len(cases), "methods": {m: out[m] for m in methods}}
    if control:
        result["controls"] = {CONTROL: out[CONTROL]}
    return result


def _summary(key: str, values: list[float]) -> float | None:
    """Median for timings, mean for the rest; None where no image gave a defined value."""
    if not values:
        return None
    return round(statistics.median(values) if key == "ms" else float(np.mean(values)), 4)
