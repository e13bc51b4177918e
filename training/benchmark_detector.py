"""Fit and score the detector with the same defaults on several datasets, and print one table.

    python -m training.benchmark_detector --data DIR[,DIR...] --json OUT.json [--layout mvtec|imagefolder|elpv]
                                          [--shots 1,4,16,all]

Every dataset gets exactly `PatchCoreConfig()` (nothing per dataset) and is scored by `training.evaluate` on
its test split. An entry `elpv` (with no folder of that name) is the elpv-dataset package used one-class.
Besides the contract keys, each row adds the anomaly map's pointing game on the defects with masks and
`border_peaks`: the share of defective pictures whose map maximum lies within 12 px (at model scale) of the
picture's border, the symptom of a detector that finds picture borders anomalous. `--shots` fits each dataset
again on a seeded sample of K of its good training pictures (few-shot; "all" = every one) and scores the same
test split, one row per dataset and K.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.cli import run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from training.evaluate import apply_split, evaluate_patchcore, load_mask, run_detections
from training.fit_patchcore import fit
from xai.bundle import load
from xai.inspector import Inspector
from xai.metrics import pointing_game
from xai.patchcore import PatchCoreConfig

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1", "f1_max", "accuracy", "pointing_game", "border_peaks",
           "bank_size", "fit_s", "ms_per_image")
BORDER_PX = 12


def border_peak(amap: np.ndarray, margin: int = BORDER_PX) -> bool:
    """Whether the map's maximum lies within `margin` pixels of its border."""
    row, col = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return min(row, col, amap.shape[0] - 1 - row, amap.shape[1] - 1 - col) < margin


def few_shot(dataset: Dataset, shots: int | None, seed: int = 0) -> Dataset:
    """`dataset` with its training set cut to a seeded sample of `shots` good pictures (None: unchanged)."""
    good = dataset.train_good
    if shots is None:
        return dataset
    if shots > len(good):
        raise DataError(f"{dataset.root} has {len(good)} good training pictures, fewer than {shots} shots.")
    chosen = sorted(np.random.default_rng(seed).choice(len(good), shots, replace=False).tolist())
    return replace(dataset, train=[good[i] for i in chosen])


def benchmark_one(entry: str, layout: str, out: Path, config: PatchCoreConfig, log=print,
                  shots: int | None = None) -> tuple[str, dict]:
    """Fit `entry` (on `shots` good pictures, or all) into `out`, evaluate it; returns (name, row)."""
    is_elpv = layout == "elpv" or (entry == "elpv" and not Path(entry).is_dir())
    dataset = load_dataset("elpv" if is_elpv else layout, None if is_elpv else entry)
    name = "elpv" if is_elpv else Path(entry).name
    if shots is not None:
        name = f"{name} {shots}-shot"
    dataset = few_shot(dataset, shots)
    start = time.perf_counter()
    fit(dataset, out, config, log=log)
    fit_s = time.perf_counter() - start
    inspector = Inspector(load(out))
    dataset = apply_split(dataset, out)
    results = run_detections(inspector, dataset)
    report = evaluate_patchcore(inspector, dataset, results)
    defects = [(s, r) for s, r in zip(dataset.test, results) if s.is_defect]
    masked = [(s, r) for s, r in defects if s.mask is not None]
    if masked:
        report["pointing_game"] = round(float(np.mean(
            [pointing_game(r.anomaly_map, load_mask(s.mask, r.anomaly_map.shape)) for s, r in masked])), 4)
    report["border_peaks"] = (round(float(np.mean([border_peak(r.anomaly_map) for _, r in defects])), 4)
                              if defects else None)
    report["bank_size"] = int(len(inspector.patchcore.memory_bank))
    report["fit_s"] = round(fit_s, 1)
    report["n_good"] = len(dataset.train_good)
    return name, report


def table(rows: dict[str, dict]) -> str:
    """The figures as a Markdown table, one row per dataset."""
    lines = ["| dataset | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = [("—" if row.get(c) is None else f"{row[c]:g}") for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark_detector", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv", help="comma-separated dataset folders ('elpv': the package)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    parser.add_argument("--out", help="keep the fitted bundles in this folder (default: a temporary one)")
    parser.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                        help="nearest-neighbour index (default: the detector's own; flat = exact, for comparison)")
    parser.add_argument("--shots", help="comma-separated numbers of good training pictures to fit on (few-shot; "
                        "'all' = every one); default: all")
    args = parser.parse_args(argv)
    try:
        shots = [None if k.strip() == "all" else int(k) for k in (args.shots or "all").split(",")]
    except ValueError:
        raise DataError(f"--shots takes numbers or 'all', got {args.shots!r}.") from None
    if any(k is not None and k < 1 for k in shots):
        raise DataError("--shots must be at least 1.")
    entries = [e.strip() for e in args.data.split(",") if e.strip()]
    if not entries:
        raise DataError("--data names no dataset.")
    config = PatchCoreConfig(index=args.index)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="defect-xai-bench-") as scratch:
        root = Path(args.out or scratch)
        for entry in entries:
            for k in shots:
                name, row = benchmark_one(entry, args.layout, root / (Path(entry).name + (f"-{k}" if k else "")),
                                          config, log=lambda msg: print(msg, file=sys.stderr), shots=k)
                rows[name] = row
            print(f"{name}: " + ", ".join(f"{c} {row.get(c)}" for c in COLUMNS), file=sys.stderr)
    result = {"config": config.to_dict(), "datasets": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
