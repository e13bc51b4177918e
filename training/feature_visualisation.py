"""What the CNN head has learned, computed once when it is trained and stored in its bundle as
`feature_visualisation_<component>.png` (with its facts in bundle.json): the picture optimised to raise the defect
class (xai.feature_visualisation), and beside it the patches of real training pictures that the class map (CAM)
rates highest, so the optimised picture can be read against real ones.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from training.data import Sample
from training.features import image_batches
from training.jobs import progress
from xai.backbone import TRUNKS, normalise
from xai.bundle import read_bundle_meta, write_meta
from xai.explainers.base import Classifier, ExplainContext
from xai.explainers.cam import CAM
from xai.feature_visualisation import strongest_cells, visualise_class

STEPS = 192  # optimisation steps: the class probability has levelled off by then on bottle and tire
PICTURES = 48  # training pictures searched for the patches the class responds to
PATCHES = 8
PATCH_SIDE = 64  # model pixels around a cell (4 cells of 16)


def file_name(component: str) -> str:
    return f"feature_visualisation_{component}.png"


def visualise_head(out: Path, component: str, head, trunk, labels: list[str], normal_index: int | None,
                   pictures: list[Sample], size: int, seed: int = 0) -> dict:
    """Compute, draw and store the head's feature visualisation in bundle `out`; its facts (also in bundle.json)."""
    spec = TRUNKS[trunk.name]
    classifier = Classifier(trunk, copy.deepcopy(head).requires_grad_(False)).eval()  # gradients reach the picture only
    target = 1 - normal_index if normal_index is not None and len(labels) == 2 else len(labels) - 1
    start = time.perf_counter()
    with progress(range(STEPS), "feature visualisation", unit="step") as bar:
        picture, probability = visualise_class(classifier, target, size, spec.mean, spec.std, STEPS, seed=seed,
                                               progress=lambda step: bar.update(1))
    seconds = time.perf_counter() - start
    chosen = [pictures[i] for i in sorted(np.random.default_rng(seed).permutation(len(pictures))[:PICTURES])]
    patches = responding_patches(classifier, target, chosen, size, spec.mean, spec.std)
    draw(picture, labels[target], probability, patches).save(out / file_name(component))
    facts = {"file": file_name(component), "class": labels[target], "probability": round(probability, 4),
             "steps": STEPS, "seconds": round(seconds, 1),
             "patches": [{"picture": Path(s.path).name, "box": box, "evidence": round(v, 4)}
                         for s, box, v, _ in patches]}
    meta = read_bundle_meta(out)
    meta.head(component).feature_visualisation = facts
    write_meta(out, meta)
    return facts


def responding_patches(classifier: Classifier, target: int, samples: list[Sample], size: int, mean, std
                       ) -> list[tuple[Sample, list[int], float, np.ndarray]]:
    """The PATCHES (sample, box in model pixels, CAM value, patch pixels) the class map rates highest, one per
    picture."""
    maps, arrays = [], []
    cam = CAM(ExplainContext(classifier.trunk, {CAM.component: classifier.head}))
    for batch, _ in image_batches(samples, size, 8, "patches the class responds to"):
        maps.append(cam.compute(normalise(batch, mean, std), torch.full((len(batch),), target))["heatmap"])
        arrays.extend(batch)
    maps = torch.cat(maps)
    cell = size // maps.shape[-1]
    found = []
    for i, row, col in strongest_cells(maps, PATCHES):
        cy, cx = int((row + 0.5) * cell), int((col + 0.5) * cell)
        top = min(max(0, cy - PATCH_SIDE // 2), size - PATCH_SIDE)
        left = min(max(0, cx - PATCH_SIDE // 2), size - PATCH_SIDE)
        box = [left, top, left + PATCH_SIDE, top + PATCH_SIDE]
        pixels = arrays[i][top:top + PATCH_SIDE, left:left + PATCH_SIDE]
        found.append((samples[i], box, float(maps[i, row, col]), pixels))
    return found


def draw(picture: np.ndarray, label: str, probability: float, patches: list) -> Image.Image:
    """The optimised picture on the left, the responding patches (enlarged 2x) in a grid on the right."""
    side, tile, pad, text = picture.shape[0], 2 * PATCH_SIDE, 8, 30
    columns = 4
    rows = max(1, -(-len(patches) // columns))
    canvas = Image.new("RGB", (side + 2 * pad + columns * (tile + pad), max(side, rows * (tile + pad)) + text + pad),
                       "white")
    canvas.paste(Image.fromarray(picture), (pad, text))
    for k, (_, _, _, pixels) in enumerate(patches):
        canvas.paste(Image.fromarray(np.ascontiguousarray(pixels)).resize((tile, tile), Image.NEAREST),
                     (side + 2 * pad + (k % columns) * (tile + pad), text + (k // columns) * (tile + pad)))
    ink = ImageDraw.Draw(canvas)
    ink.text((pad, 4), f"optimised to raise '{label}' (p = {probability:.3f})", fill="black")
    ink.text((side + 2 * pad, 4), f"training-picture patches '{label}' responds to most (CAM)", fill="black")
    return canvas
