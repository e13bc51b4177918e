"""Measure how far each explanation method deserves belief, on the defect test images that have masks.

    python -m training.evaluate_explanations --data DIR --bundle BUNDLE --json OUT.json [--methods a,b] [--limit N]

Per method, averaged over images: pointing game (peak inside the mask dilated by 8 px at 224), energy in
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

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.card import write_card
from training.cli import progress, run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from training.evaluate import apply_split, load_mask
from training.score_model import fidelity
from xai.bundle import read_meta, write_meta
from xai.explainers import METHODS, create_explainer
from xai.explainers.integrated_gradients import baseline_for
from xai.explainers.retrieval import nearest_good_image
from xai.inspector import Inspector
from xai.io import load_image
from xai.metrics import (
    EXPLANATION_METRICS,
    curve_auc,
    energy_in_mask,
    heatmap_auroc,
    perturbation_curve,
    pointing_game,
    rank_correlation,
)


def scorer(inspector: Inspector):
    """Batch [N, 3, H, W] (normalised) -> the score deletion/insertion curves follow. A classifier sees the batch
    resized to its square input (PatchCore methods perturb the picture in its own aspect)."""
    context = inspector.explain_context()
    size = (inspector.input_size, inspector.input_size)
    for component in ("classifier_cnn", "classifier_vit"):
        if component in inspector.heads:
            model = context.classifier(component)
            target = 1 - inspector.normal_index if inspector.normal_index is not None else 0

            def classifier_score(batch: np.ndarray, model=model, target=target) -> np.ndarray:
                x = torch.from_numpy(batch).float()
                if tuple(x.shape[-2:]) != size:
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                with torch.no_grad():
                    return model(x).softmax(-1)[:, target].numpy()
            return classifier_score
    pc = inspector.patchcore

    def patchcore_score(batch: np.ndarray) -> np.ndarray:
        _, scores = pc(inspector.trunk, torch.from_numpy(batch).float())
        return scores.numpy() / inspector.thresholds["patchcore"]
    return patchcore_score


@dataclass
class Case:
    """One defective picture to explain, and its ground-truth mask at any model shape (h, w)."""

    picture: Image.Image
    mask: Callable[[tuple[int, int]], np.ndarray]


def masked_defects(dataset: Dataset, limit: int | None, seed: int = 0) -> list[Case]:
    samples = [s for s in dataset.test if s.is_defect and s.mask is not None]
    if not samples:
        raise DataError(f"{dataset.root} has no defective test images with masks to score explanations against.")
    if limit and limit < len(samples):
        order = np.random.default_rng(seed).permutation(len(samples))[:limit]
        samples = [samples[i] for i in sorted(order)]
    return [Case(load_image(s.path), lambda shape, path=s.mask: load_mask(path, shape)) for s in samples]


def edge_control(x: torch.Tensor) -> np.ndarray:
    """The control row: a Sobel edge map of the picture [1, 3, h, w] itself, which ignores the model entirely.
    Scored like the methods, it shows what a map that does not depend on the weights earns on each metric (its
    randomisation similarity is 1 by construction)."""
    import cv2

    gray = x[0].mean(0).numpy().astype(np.float32)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))


CONTROL = "edge_control"


SLOW_CARD_CASES = 4  # a report card measures its slow methods (Score-CAM: seconds a picture) on this many cases


def evaluate_methods(inspector: Inspector, cases: list[Case], methods: list[str], control: bool = True,
                     slow_cases: int | None = None) -> dict:
    """The contract JSON for `methods` over `cases`, plus (`control`) the edge-detector control under "controls";
    with `slow_cases`, the slow methods are measured on the first that many cases only (their row says how many)."""
    context = inspector.explain_context()
    random_context = context.randomised(seed=0)
    score = scorer(inspector)
    explainers = {m: create_explainer(m, context, **({"plot": False} if METHODS[m].surrogate else {}))
                  for m in methods}
    randomised = {m: create_explainer(m, random_context) for m in methods}
    control_component = next((c for c in ("classifier_cnn", "classifier_vit") if c in inspector.heads), "patchcore")
    rows: dict[str, dict[str, list]] = {m: {} for m in [*methods, *([CONTROL] if control else [])]}
    surrogates: dict[str, list[tuple[float, float]]] = {}  # per surrogate method: (its output, the true score)
    for index, case in enumerate(progress(cases, "explanations")):
        prepared: dict[str, tuple] = {}  # per component: input, mask, image and deletion reference
        for method in rows:
            if slow_cases is not None and index >= slow_cases and method != CONTROL and METHODS[method].slow:
                continue
            component = control_component if method == CONTROL else inspector.component_of(method)
            if component not in prepared:
                x = inspector.model_input(case.picture, component)
                reference = (nearest_good_image(context, x) if context.retrieval is not None
                             else baseline_for(x, "blur"))[0].numpy()
                prepared[component] = (x, case.mask(tuple(x.shape[-2:])), x[0].numpy(), reference)
            x, mask, image, reference = prepared[component]
            if method == CONTROL:
                start = time.perf_counter()
                heat = edge_control(x)
                ms, random_heat = (time.perf_counter() - start) * 1000.0, edge_control(x)
            elif explainers[method].surrogate:  # a model of the score: its fidelity, not a map, is what to check
                exp = explainers[method].explain(x)
                rows[method].setdefault("ms", []).append(exp.ms)
                surrogates.setdefault(method, []).append((exp.extras["output"], exp.extras["score"],
                                                          exp.extras["follows_this_picture"]))
                continue
            else:
                exp = explainers[method].explain(x)
                heat, ms, random_heat = exp.heatmap, exp.ms, randomised[method].explain(x).heatmap
            values = {
                "pointing_game": pointing_game(heat, mask),
                "energy_in_mask": energy_in_mask(heat, mask),
                "heatmap_auroc": heatmap_auroc(heat, mask),
                "deletion_auc": curve_auc(perturbation_curve(score, image, reference, heat)),
                "insertion_auc": curve_auc(perturbation_curve(score, image, reference, heat, insert=True)),
                "randomization_similarity": rank_correlation(heat, random_heat),
                "ms": ms,
            }
            for key, value in values.items():
                if value is not None:
                    rows[method].setdefault(key, []).append(value)
    out = {method: {k: _summary(k, metrics.get(k, [])) for k in EXPLANATION_METRICS}
           for method, metrics in rows.items()}
    for method, pairs in surrogates.items():
        output, score, follows = np.array(pairs, dtype=float).T
        out[method]["fidelity"] = {**fidelity(output, score, inspector.thresholds["patchcore"]),
                                   "follows": round(float(follows.mean()), 4), "data": "these pictures"}
        out[method]["calibration_fidelity"] = context.score_model.fidelity
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


def explain_into(bundle: str | Path, dataset: Dataset, methods: list[str] | None = None, limit: int | None = None,
                 json_path: Path | None = None, store: bool = True, slow_cases: int | None = None) -> dict:
    """Score `methods` (default: every one the bundle supports) on at most `limit` of the test defects with masks;
    write the table to `json_path` and, for a bundle folder with `store`, into its bundle.json and card."""
    inspector = Inspector.from_source(str(bundle))
    supported = inspector.methods()
    methods = methods or supported
    missing = [m for m in methods if m not in supported]
    if missing:
        raise DataError(f"this bundle cannot run {', '.join(missing)}; it supports {', '.join(supported)}.")
    dataset = apply_split(dataset, inspector.bundle.path)
    result = evaluate_methods(inspector, masked_defects(dataset, limit), methods, slow_cases=slow_cases)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if store and Path(bundle).is_dir():
        meta = read_meta(inspector.bundle.path)
        meta.setdefault("metrics", {})["explanations"] = result
        write_meta(inspector.bundle.path, meta)
        write_card(inspector.bundle.path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_explanations",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset folder with masks (mvtec layout)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    parser.add_argument("--methods", help="comma-separated subset (default: every method the bundle supports)")
    parser.add_argument("--limit", type=int, help="score at most N images (a seeded sample)")
    parser.add_argument("--no-store", action="store_true", help="do not write the table into the bundle")
    args = parser.parse_args(argv)
    result = explain_into(args.bundle, load_dataset(args.layout, args.data),
                          args.methods.split(",") if args.methods else None, args.limit, Path(args.json),
                          store=not args.no_store)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
