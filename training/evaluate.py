"""Score a bundle on a dataset's test split and write the metrics JSON (also stored in bundle.json).

    python -m training.evaluate --data DIR --bundle BUNDLE --json OUT.json [--layout mvtec|imagefolder|elpv]

Every component: image AUROC, F1 and accuracy at its stored threshold, ms per image (median over
single-image detect calls: decoding, trunk and that component). PatchCore, where the test set has masks,
adds pixel AUROC, AUPRO (FPR limit 0.3) and the pointing game at the model's input resolution, and a breakdown
per defect type (`per_type`: each type's pictures against all good ones); multi-class heads add macro F1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from training.card import write_card
from training.cli import run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from training.jobs import progress
from xai.bundle import read_bundle_meta, save_examples, write_meta
from xai.inspector import Inspector
from xai.metrics import aupro, auroc, binary_report, f1_max, pointing_game


def load_mask(path: Path | None, shape: int | tuple[int, int]) -> np.ndarray:
    """Ground-truth mask resized to a model input of `shape` (side, or (h, w); bilinear, then > 0.5); all-false
    when absent."""
    h, w = (shape, shape) if isinstance(shape, int) else shape
    if path is None:
        return np.zeros((h, w), dtype=bool)
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L").resize((w, h), Image.BILINEAR)) > 127


def apply_split(dataset: Dataset, bundle_dir: Path) -> Dataset:
    """Use exactly the test split recorded in the bundle's split.json, when it has one."""
    split_file = bundle_dir / "split.json"
    if not split_file.is_file() or dataset.split is None:
        return dataset
    wanted = set(json.loads(split_file.read_text())["test"])
    everything = dataset.train + dataset.test
    root = Path(dataset.root)
    dataset.test = [s for s in everything if str(s.path.relative_to(root)) in wanted]
    dataset.train = [s for s in everything if str(s.path.relative_to(root)) not in wanted]
    return dataset


PATCHCORE_PARTS = ("decode", "preprocess", "trunk", "features", "knn", "map")
SHARED_PARTS = ("decode", "preprocess", "trunk")  # a head's cost when it shares PatchCore's trunk forward
HEAD_PARTS = ("decode", "head_trunk")  # ... and when it runs its own


def run_detections(inspector: Inspector, dataset: Dataset) -> list:
    """One detect() per test image (every component at once), with a progress bar."""
    if not dataset.test:
        raise DataError(f"{dataset.root} has no test images to evaluate on.")
    return [inspector.detect(sample.path) for sample in progress(dataset.test, "evaluate")]


def _ms(results: list, parts: tuple[str, ...] | None, component: str | None = None) -> float:
    """Median ms of `parts` (a head `component`: its own trunk forward, or the shared one, plus itself)."""
    def cost(r) -> float:
        names = parts or ((HEAD_PARTS if "head_trunk" in r.timings_ms else SHARED_PARTS) + (component,))
        return sum(r.timings_ms.get(p, 0.0) for p in names)
    return round(statistics.median(cost(r) for r in results), 2)


def evaluate_patchcore(inspector: Inspector, dataset: Dataset, results: list) -> dict:
    """Detection metrics for the PatchCore component on `dataset.test`; pixel metrics at model resolution, each
    mask resized to its picture's anomaly map."""
    labels = np.array([s.is_defect for s in dataset.test])
    scores = np.array([r.scores["patchcore"] for r in results])
    report = binary_report(labels, scores, inspector.thresholds["patchcore"])
    report["f1_max"] = f1_max(labels, scores)
    # what the stored threshold does on the test split, against what its calibration promised (bundle.json)
    report["false_alarm_rate"] = float((scores[~labels] > inspector.thresholds["patchcore"]).mean()) \
        if (~labels).any() else None
    report["detection_rate"] = float((scores[labels] > inspector.thresholds["patchcore"]).mean()) \
        if labels.any() else None
    report["ms_per_image"] = _ms(results, PATCHCORE_PARTS)
    report["threshold"] = inspector.thresholds["patchcore"]
    masks = None
    if any(s.mask is not None for s in dataset.test):
        masks = [load_mask(s.mask if s.is_defect else None, r.anomaly_map.shape) for s, r in zip(dataset.test, results)]
        maps = [r.anomaly_map for r in results]
        report["pixel_auroc"] = pixel_auroc(masks, maps)
        report["aupro"] = aupro(masks, maps, fpr_limit=0.3)
        report["pointing_game"] = pointing_rate([(m, a) for s, m, a in zip(dataset.test, masks, maps) if s.is_defect])
    types = per_type(dataset, scores, masks, [r.anomaly_map for r in results])
    if types:
        report["per_type"] = types
    return _rounded(report)


def pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float | None:
    """Pixel AUROC over every pixel of the given pictures (maps at their masks' resolution)."""
    return auroc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))


def pointing_rate(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Share of (mask, map) pairs whose map maximum lies on the mask (pointing game); pairs with an empty mask
    (a defect without ground truth) are left out, None when none is left."""
    hits = [pointing_game(amap, mask) for mask, amap in pairs if mask.any()]
    return round(float(np.mean(hits)), 4) if hits else None


def per_type(dataset: Dataset, scores: np.ndarray, masks: list[np.ndarray] | None,
             maps: list[np.ndarray]) -> dict[str, dict]:
    """Each defect type's figures, so a weak kind of defect shows instead of hiding in an average: image AUROC of
    its pictures against all good test pictures, pixel AUROC over its pictures, pointing game on its masks."""
    good = np.array([not s.is_defect for s in dataset.test])
    out: dict[str, dict] = {}
    for kind in sorted({s.label for s in dataset.test if s.is_defect}):
        mine = np.array([s.is_defect and s.label == kind for s in dataset.test])
        chosen = mine | good
        row: dict = {"n": int(mine.sum()), "image_auroc": auroc(mine[chosen], scores[chosen])}
        if masks is not None:
            idx = np.flatnonzero(mine)
            row["pixel_auroc"] = pixel_auroc([masks[i] for i in idx], [maps[i] for i in idx])
            row["pointing_game"] = pointing_rate([(masks[i], maps[i]) for i in idx])
        out[kind] = _rounded(row)
    return out


def evaluate_classifier(inspector: Inspector, dataset: Dataset, results: list, component: str) -> dict:
    """Binary: AUROC of P(defect), F1/accuracy at the stored threshold. Multi-class adds top-1 accuracy and
    macro F1 over all classes (and AUROC is normal-vs-rest, or macro one-vs-rest without a normal class)."""
    labels = inspector.labels
    index = {name: i for i, name in enumerate(labels)}
    truth = np.array([index.get(s.label, -1) for s in dataset.test])
    probs = np.array([[r.class_probabilities[component][c] for c in labels] for r in results])
    report: dict = {}
    if inspector.normal_index is not None:
        is_defect = np.array([s.is_defect for s in dataset.test])
        report.update(binary_report(is_defect, 1 - probs[:, inspector.normal_index], inspector.thresholds[component]))
    if len(labels) > 2 or inspector.normal_index is None:
        known = truth >= 0
        pred = probs.argmax(1)
        report["accuracy"] = float((pred[known] == truth[known]).mean())
        report["macro_f1"] = float(f1_score(truth[known], pred[known], average="macro",
                                            labels=list(range(len(labels))), zero_division=0))
        if inspector.normal_index is None:
            report["f1"] = report["macro_f1"]
            report["image_auroc"] = float(roc_auc_score(truth[known], probs[known], multi_class="ovr",
                                                        labels=list(range(len(labels)))))
    report["ms_per_image"] = _ms(results, None, component)
    report["threshold"] = inspector.thresholds[component]
    return _rounded(report)


def _rounded(report: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}


def evaluate_bundle(inspector: Inspector, dataset: Dataset) -> dict:
    """The contract JSON: n_images plus one entry per component the bundle has."""
    results = run_detections(inspector, dataset)
    out: dict = {"n_images": len(dataset.test)}
    if inspector.patchcore is not None:
        out["patchcore"] = evaluate_patchcore(inspector, dataset, results)
    for component in inspector.heads:
        out[component] = evaluate_classifier(inspector, dataset, results, component)
    return out


def pick_examples(dataset: Dataset, total: int = 6) -> list[tuple[Path, str]]:
    """The first test pictures (by file name) of each class, the same number per class: no cherry-picking."""
    by_label: dict[str, list[Path]] = {}
    for sample in dataset.test:
        by_label.setdefault(sample.label, []).append(sample.path)
    per_label = max(1, total // max(1, len(by_label)))
    return [(path, label) for label in sorted(by_label) for path in sorted(by_label[label])[:per_label]][:total]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset folder (optional for --layout elpv)")
    parser.add_argument("--bundle", required=True, help="bundle folder or Hub repo id")
    parser.add_argument("--json", required=True, help="where to write the metrics JSON")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-store", action="store_true", help="do not write the metrics into the bundle")
    return parser.parse_args(argv)


def evaluate_into(bundle: str | Path, dataset: Dataset, json_path: Path | None = None, store: bool = True) -> dict:
    """Evaluate `bundle` on `dataset`'s test split (the split the bundle recorded); write the metrics to
    `json_path` and, for a bundle folder with `store`, into its bundle.json with examples and card."""
    inspector = Inspector.from_source(str(bundle))
    dataset = apply_split(dataset, inspector.bundle.path)
    result = evaluate_bundle(inspector, dataset)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    bundle_dir = inspector.bundle.path
    if store and Path(bundle).is_dir():
        meta = read_bundle_meta(bundle_dir)
        meta.metrics = {**(meta.metrics or {}), **{k: v for k, v in result.items() if k != "n_images"},
                        "n_images": result["n_images"]}
        save_examples(bundle_dir, meta, pick_examples(dataset))
        write_meta(bundle_dir, meta)
        write_card(bundle_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = load_dataset(args.layout, args.data, args.test_fraction, args.seed)
    result = evaluate_into(args.bundle, dataset, Path(args.json), store=not args.no_store)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
