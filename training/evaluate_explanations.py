"""Measure how far each explanation method deserves belief, on the defect test images that have masks.

    python -m training.evaluate_explanations --data DIR --bundle BUNDLE --json OUT.json [--methods a,b] [--limit N]

The measures are xai.explanation_quality's (per method: pointing game, energy in mask, heatmap AUROC, deletion and
insertion AUC, the model-randomisation check and ms, beside an edge-detector control); this script loads the cases
and stores the table in the JSON file, the bundle's bundle.json and its card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from training.card import write_card
from training.cli import run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from training.evaluate import apply_split, load_mask
from training.jobs import progress
from xai import explanation_quality
from xai.bundle import read_bundle_meta, write_meta
from xai.explanation_quality import Case
from xai.inspector import Inspector
from xai.io import load_image

SLOW_CARD_CASES = 4  # a report card measures its slow methods (Score-CAM: seconds a picture) on this many cases


def masked_defects(dataset: Dataset, limit: int | None, seed: int = 0) -> list[Case]:
    """The test defects that have masks (a seeded sample of `limit` of them), each with its mask at any shape."""
    samples = [s for s in dataset.test if s.is_defect and s.mask is not None]
    if not samples:
        raise DataError(f"{dataset.root} has no defective test images with masks to score explanations against.")
    if limit and limit < len(samples):
        order = np.random.default_rng(seed).permutation(len(samples))[:limit]
        samples = [samples[i] for i in sorted(order)]
    return [Case(load_image(s.path), lambda shape, path=s.mask: load_mask(path, shape)) for s in samples]


def evaluate_methods(inspector: Inspector, cases: list[Case], methods: list[str], control: bool = True,
                     slow_cases: int | None = None) -> dict:
    """xai.explanation_quality.evaluate_methods with the command line's progress bar (which a set `stop_when`
    cancels: a visitor's part stops there too)."""
    return explanation_quality.evaluate_methods(inspector, cases, methods, control, slow_cases, progress)


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
        meta = read_bundle_meta(inspector.bundle.path)
        meta.metrics = {**(meta.metrics or {}), "explanations": result}
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
