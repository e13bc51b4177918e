"""Fit and score the detector with the same defaults on several datasets, and print one table.

    python -m training.benchmark_detector --data DIR[,DIR...] --json OUT.json [--layout mvtec|imagefolder|elpv]
                                          [--shots 1,4,16,all] [--baseline plain] [--set FIELD=VALUE ...]

Every dataset gets exactly `PatchCoreConfig()` (nothing per dataset) and is scored by `training.evaluate` on
its test split. An entry `elpv` (with no folder of that name) is the elpv-dataset package used one-class.
Besides the contract keys, each row adds the anomaly map's pointing game on the defects with masks and
`border_peaks`: the share of defective pictures whose map maximum lies within 12 px (at model scale) of the
picture's border, the symptom of a detector that finds picture borders anomalous. `--shots` fits each dataset
again on a seeded sample of K of its good training pictures (few-shot; "all" = every one) and scores the same
test split, one row per dataset and K. `--set` overrides one `PatchCoreConfig` field for every set (what one default
costs); a second table gives each defect type's figures. `--baseline plain` fits the plain PatchCore on the same
trunk instead (PLAIN_PATCHCORE: the stride-8 and stride-16 stages, one 3 x 3 average, raw concatenation, every patch
in the bank, no border correction; shape and view kept, so `--set short_side=224` for the classic view), the
reference the detector's defaults are measured against.
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

from training.choice import CHOSEN_FIELDS
from training.cli import run
from training.data import LAYOUTS, DataError, Dataset, load_dataset
from training.evaluate import apply_split, evaluate_patchcore, run_detections
from training.fit_patchcore import fit
from xai.bundle import load
from xai.inspector import Inspector
from xai.patchcore import PatchCoreConfig, config_choices

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1", "f1_max", "accuracy", "false_alarm_rate", "pointing_game",
           "border_peaks", "view", "bank_size", "fit_s", "ms_per_image")
BORDER_PX = 12
FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
# The plain PatchCore (Roth et al. 2022) on the same trunk with its full bank (no coreset), as overrides of today's
# defaults: what every choice beyond it is measured against (docs/benchmarks.md).
# "downsample" only matters with `--set layers=1,2,4` on top: a finer stage averaged onto the grid, as PatchCore does.
PLAIN_PATCHCORE = {"layers": (2, 4), "colour_window": 0, "downsample": "avg", "coreset_ratio": 1.0,
                   "part_scaling": "none", "border_correction": False, "choose": False}


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


def benchmark_one(entry: str, layout: str, out: Path, config: PatchCoreConfig,
                  shots: int | None = None) -> tuple[str, dict]:
    """Fit `entry` (on `shots` good pictures, or all) into `out`, evaluate it; returns (name, row)."""
    is_elpv = layout == "elpv" or (entry == "elpv" and not Path(entry).is_dir())
    dataset = load_dataset("elpv" if is_elpv else layout, None if is_elpv else entry)
    name = "elpv" if is_elpv else Path(entry).name
    if shots is not None:
        name = f"{name} {shots}-shot"
    dataset = few_shot(dataset, shots)
    start = time.perf_counter()
    fit(dataset, out, config)
    fit_s = time.perf_counter() - start
    inspector = Inspector(load(out))
    dataset = apply_split(dataset, out)
    results = run_detections(inspector, dataset)
    report = evaluate_patchcore(inspector, dataset, results)
    defects = [(s, r) for s, r in zip(dataset.test, results) if s.is_defect]
    report["border_peaks"] = (round(float(np.mean([border_peak(r.anomaly_map) for _, r in defects])), 4)
                              if defects else None)
    report["bank_size"] = int(len(inspector.patchcore.memory_bank))
    cfg = inspector.patchcore.config  # the view and smoothing the fit chose (or was given)
    report["view"] = f"{cfg.short_side}{'e' if cfg.enlarge else ''}/{cfg.sigma:g}"
    report["fit_s"] = round(fit_s, 1)
    report["n_good"] = len(dataset.train_good)
    return name, report


def table(rows: dict[str, dict]) -> str:
    """The figures as a Markdown table, one row per dataset."""
    lines = ["| dataset | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = [("—" if row.get(c) is None else row[c] if isinstance(row[c], str) else f"{row[c]:g}")
                 for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_overrides(config: PatchCoreConfig, settings: list[str]) -> PatchCoreConfig:
    """`config` with FIELD=VALUE overrides, each value read as its field's type (the type of its default: tuples as
    comma lists, true/false words for flags, "none" for an optional number), checked before anything is fitted."""
    defaults = PatchCoreConfig().to_dict()  # every field's name and the type its value is read as
    changes: dict = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or name not in defaults:
            raise DataError(f"--set takes FIELD=VALUE with a PatchCoreConfig field "
                            f"({', '.join(sorted(defaults))}), got {setting!r}.")
        changes[name] = _read_value(name, value, defaults[name])
    if any(name in changes for name in CHOSEN_FIELDS):
        changes.setdefault("choose", False)  # a view or smoothing set by hand is measured as set, not chosen over
    changed = replace(config, **changes)
    problems = changed.problems()
    if problems:  # before hours of fitting, not at the first load
        raise DataError(f"--set: {'; '.join(problems)}.")
    return changed


def _read_value(name: str, value: str, default: object) -> object:
    """One --set value as the type of the field's default."""
    word = value.strip().lower()
    try:
        if isinstance(default, list):
            return tuple(int(v) for v in value.split(","))
        if isinstance(default, bool):
            if word not in FLAG_WORDS:
                raise ValueError
            return FLAG_WORDS[word]
        if default is None:
            return None if word == "none" else int(value)
        return type(default)(value)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise DataError(f"--set {name}: cannot read {value!r} as {kind}.") from None


def type_table(rows: dict[str, dict]) -> str:
    """The per-defect-type figures as a Markdown table, one row per dataset and type."""
    lines = ["| dataset | defect type | n | image_auroc | pixel_auroc | pointing_game |", "|---" * 6 + "|"]
    for name, row in rows.items():
        for kind, figures in row.get("per_type", {}).items():
            cells = [("—" if figures.get(c) is None else f"{figures[c]:g}")
                     for c in ("n", "image_auroc", "pixel_auroc", "pointing_game")]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark_detector", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv", help="comma-separated dataset folders ('elpv': the package)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    parser.add_argument("--out", help="keep the fitted bundles in this folder (default: a temporary one)")
    parser.add_argument("--index", choices=config_choices("index"), default="auto",
                        help="nearest-neighbour index (default: the detector's own; flat = exact, for comparison)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one PatchCoreConfig field for every set (repeatable), e.g. short_side=224 or "
                        "layers=2,4: measures what one default costs")
    parser.add_argument("--baseline", choices=("plain",),
                        help="fit the plain PatchCore on the same trunk instead of today's defaults (then --set)")
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
    if args.baseline == "plain":
        config = replace(config, **PLAIN_PATCHCORE)
    config = with_overrides(config, args.set)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="defect-xai-bench-") as scratch:
        root = Path(args.out or scratch)
        for entry in entries:
            for k in shots:
                name, row = benchmark_one(entry, args.layout, root / (Path(entry).name + (f"-{k}" if k else "")),
                                          config, shots=k)
                rows[name] = row
                print(f"{name}: " + ", ".join(f"{c} {row.get(c)}" for c in COLUMNS), file=sys.stderr)
    result = {"config": config.to_dict(), "datasets": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print()
    print(type_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
