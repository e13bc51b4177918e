"""Score a bundle on a dataset's test split and write the metrics JSON (also stored in bundle.json).

    python -m training.evaluate --data DIR --bundle BUNDLE --json OUT.json [--layout mvtec|imagefolder|elpv]

PatchCore: image AUROC, F1 and accuracy at the bundle's stored threshold, ms per image (median of
single-image detect calls, decoding included) and, where the test set has masks, pixel AUROC and AUPRO
(FPR limit 0.3), all at the model's input resolution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.card import write_card
from training.cli import progress, run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from xai.bundle import read_meta, write_meta
from xai.inspector import Inspector
from xai.metrics import aupro, auroc, binary_report


def load_mask(path: Path | None, size: int) -> np.ndarray:
    """Ground-truth mask resized to the model's input (bilinear, then > 0.5); all-false when absent."""
    if path is None:
        return np.zeros((size, size), dtype=bool)
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L").resize((size, size), Image.BILINEAR)) > 127


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


def evaluate_patchcore(inspector: Inspector, dataset: Dataset) -> dict:
    """Detection metrics for the PatchCore component on `dataset.test`."""
    if not dataset.test:
        raise DataError(f"{dataset.root} has no test images to evaluate on.")
    size = inspector.input_size
    has_masks = any(s.mask is not None for s in dataset.test)
    scores, labels, times, maps, masks = [], [], [], [], []
    for sample in progress(dataset.test, "evaluate"):
        result = inspector.detect(sample.path)
        scores.append(result.score)
        labels.append(sample.is_defect)
        times.append(result.timings_ms["total"])
        if has_masks:
            maps.append(result.anomaly_map.astype(np.float32))
            masks.append(load_mask(sample.mask, size) if sample.is_defect else np.zeros((size, size), bool))
    report = binary_report(np.array(labels), np.array(scores), inspector.threshold)
    report["ms_per_image"] = round(statistics.median(times), 2)
    report["threshold"] = inspector.threshold
    if has_masks:
        mask_arr, map_arr = np.stack(masks), np.stack(maps)
        report["pixel_auroc"] = auroc(mask_arr, map_arr)
        report["aupro"] = aupro(mask_arr, map_arr, fpr_limit=0.3)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inspector = Inspector.from_source(args.bundle)
    dataset = apply_split(load_dataset(args.layout, args.data, args.test_fraction, args.seed), inspector.bundle.path)
    result: dict = {"n_images": len(dataset.test)}
    if "patchcore" in inspector.bundle.components():
        result["patchcore"] = evaluate_patchcore(inspector, dataset)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bundle_dir = inspector.bundle.path
    if not args.no_store and Path(args.bundle).is_dir():
        meta = read_meta(bundle_dir)
        meta.setdefault("metrics", {}).update({k: v for k, v in result.items() if k != "n_images"})
        meta["metrics"]["n_images"] = result["n_images"]
        write_meta(bundle_dir, meta)
        write_card(bundle_dir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
