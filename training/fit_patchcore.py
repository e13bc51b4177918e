"""Fit the PatchCore detector on a dataset's good training images and write it into a bundle.

    python -m training.fit_patchcore --data DIR --out BUNDLE [--layout mvtec|imagefolder|elpv]

The decision threshold comes from data the bank never saw: a seeded share of the good training images
(`calibration_fraction`, at least 3) is held out, scored, and the threshold is set at
mean + 3 standard deviations of their scores, i.e. about 0.1 % false alarms on good parts if their
scores are roughly Gaussian. Those scores are stored with the model so the rule can be audited.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.bundle_meta import describe
from training.card import write_card
from training.cli import relative_name, run, training_parser
from training.data import DataError, Dataset, Sample, input_size_for, load_dataset
from training.features import image_batches
from xai.backbone import TRUNKS, create_trunk, normalise
from xai.bundle import RETRIEVAL_DIR, save_patchcore, thumbnail_name
from xai.patchcore import PatchCore, PatchCoreConfig

THRESHOLD_SIGMAS = 3.0
MIN_CALIBRATION = 3


def split_calibration(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(bank images, calibration images): a seeded random `fraction` (>= 3) held out when there are enough."""
    n_cal = max(MIN_CALIBRATION, int(round(fraction * len(samples))))
    if len(samples) < n_cal + 2:
        raise DataError(f"Need at least {MIN_CALIBRATION + 2} good training images to fit and calibrate; "
                        f"found {len(samples)}.")
    order = np.random.default_rng(seed).permutation(len(samples))
    held = set(order[:n_cal].tolist())
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def fit(dataset: Dataset, out: Path, config: PatchCoreConfig, batch_size: int = 16, category: str | None = None,
        log=print) -> dict:
    """Fit, calibrate and save the detector into `out`; returns the facts written to bundle.json."""
    good = dataset.train_good
    if not good:
        raise DataError(f"{dataset.root} has no good training images to fit the detector on.")
    bank_samples, cal_samples = split_calibration(good, config.calibration_fraction, config.seed)
    spec = TRUNKS[config.trunk]
    trunk = create_trunk(config.trunk)
    model = PatchCore(config)
    upto = max(config.layers)
    timings = {}

    t0 = time.perf_counter()
    parts_by_layer: list[list[torch.Tensor]] = [[] for _ in config.layers]
    thumbs = out / RETRIEVAL_DIR
    thumbs.mkdir(parents=True, exist_ok=True)
    n_seen = 0
    for arrays, _ in image_batches(bank_samples, config.input_size, batch_size, "features"):
        for array in arrays:  # the retrieval trace shows these; JPEG keeps a bundle small
            Image.fromarray(array).save(thumbs / thumbnail_name(n_seen), quality=90)
            n_seen += 1
        with torch.no_grad():
            parts = model.embed_parts(trunk(normalise(arrays, spec.mean, spec.std), upto=upto))
        for store, part in zip(parts_by_layer, parts):
            store.append(part)
    parts = [torch.cat(store) for store in parts_by_layer]
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.fit_layer_scales(parts)
    embedding = torch.cat([p / s for p, s in zip(parts, model.layer_scales)], dim=1)
    model.image_features = embedding.mean(dim=(2, 3))
    del parts, parts_by_layer
    log(f"coreset: selecting from {embedding.shape[0] * embedding.shape[2] * embedding.shape[3]} patches ...")
    facts = model.build_memory_bank(PatchCore.flatten(embedding), len(bank_samples))
    del embedding
    timings["coreset_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cal_scores = []
    for arrays, _ in image_batches(cal_samples, config.input_size, batch_size, "calibration"):
        with torch.no_grad():
            _, scores = model(trunk(normalise(arrays, spec.mean, spec.std), upto=upto))
        cal_scores.extend(scores.tolist())
    cal = np.asarray(cal_scores)
    threshold = float(cal.mean() + THRESHOLD_SIGMAS * cal.std(ddof=1))
    timings["calibration_s"] = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    info = {
        "threshold": threshold,
        "threshold_rule": f"mean + {THRESHOLD_SIGMAS:g} std of held-out good images' scores",
        "calibration": {"n_images": len(cal), "mean": float(cal.mean()), "std": float(cal.std(ddof=1)),
                        "max": float(cal.max()), "scores": [round(float(s), 6) for s in cal],
                        "images": [relative_name(s.path, dataset.root) for s in cal_samples]},
        "bank_images": [relative_name(s.path, dataset.root) for s in bank_samples],
        "fit": {**facts, **{k: round(v, 2) for k, v in timings.items()}},
    }
    save_patchcore(out, model, info)
    describe(out, dataset, config.trunk, config.input_size, category, ("patchcore", threshold))
    write_card(out)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = PatchCoreConfig()
    parser = training_parser("python -m training.fit_patchcore", __doc__)
    parser.add_argument("--coreset-ratio", type=float, default=defaults.coreset_ratio)
    parser.add_argument("--max-bank-size", type=int, default=defaults.max_bank_size)
    parser.add_argument("--index", choices=("auto", "flat", "hnsw"), default=defaults.index)
    parser.add_argument("--batch-size", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = load_dataset(args.layout, args.data, args.test_fraction, args.seed)
    config = PatchCoreConfig(input_size=args.input_size or input_size_for(args.layout, Path(args.out)),
                             coreset_ratio=args.coreset_ratio,
                             max_bank_size=args.max_bank_size, index=args.index, seed=args.seed)
    start = time.perf_counter()
    info = fit(dataset, Path(args.out), config, args.batch_size, args.category,
               log=lambda msg: print(msg, file=sys.stderr))
    fit_facts = info["fit"]
    print(f"fitted PatchCore on {fit_facts['n_images']} images in {time.perf_counter() - start:.1f} s: "
          f"bank {fit_facts['bank_size']} of {fit_facts['n_patches']} patches, "
          f"threshold {info['threshold']:.4f} ({info['calibration']['n_images']} calibration images) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
