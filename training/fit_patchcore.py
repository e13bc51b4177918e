"""Fit the PatchCore detector on a dataset's good training images and write it into a bundle.

    python -m training.fit_patchcore --data DIR --out BUNDLE [--layout mvtec|imagefolder|elpv] [--defects DIR]

Pictures keep their shape: each is processed on a grid of its own aspect (shorter side at the input size).
The memory bank is a greedy coreset of `coreset_ratio` of all training patches, however many there are.
The decision threshold comes from data the bank never saw (`training.calibration`): a seeded share of the
good training images (`calibration_fraction`, at least 3) is held out and scored together with synthetic
anomalies made from them, or with real defective pictures given by `--defects`. Every score, the rule and
the expected false-alarm and detection rates are stored with the model so the choice can be audited.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.anomalies import synthesize
from training.bundle_meta import describe
from training.calibration import SYNTHETIC_PER_IMAGE, calibrate
from training.card import write_card
from training.cli import progress, relative_name, run, training_parser
from training.data import DataError, Dataset, Sample, input_size_for, list_images, load_dataset
from training.features import image_batches
from xai.backbone import TRUNKS, Trunk, create_trunk, normalise
from xai.bundle import RETRIEVAL_DIR, save_patchcore, thumbnail_name
from xai.metrics import pointing_game
from xai.patchcore import PatchCore, PatchCoreConfig

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


def defect_samples(folder: str | Path | None) -> list[Sample]:
    """The real defective pictures of `--defects` (any image files in one folder)."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--defects folder {folder} does not exist.")
    samples = [Sample(path, "defect", True) for path in list_images(folder)]
    if not samples:
        raise DataError(f"--defects folder {folder} holds no images (.png, .jpg, ...).")
    return samples


def bank_features(model: PatchCore, trunk: Trunk, samples: list[Sample], thumbs: Path, batch_size: int):
    """Per-layer patch rows, their (image, row, column) sources and per-layer image means, for the bank images;
    writes each image's thumbnail (at model shape) for the retrieval trace."""
    spec = TRUNKS[model.config.trunk]
    rows: list[list[torch.Tensor]] = [[] for _ in model.config.layers]
    means: list[list[torch.Tensor]] = [[] for _ in model.config.layers]
    sources = []
    n_seen = 0
    for arrays, _ in image_batches(samples, model.input_shape, batch_size, "features"):
        with torch.no_grad():
            x = normalise(arrays, spec.mean, spec.std)
            parts = model.embed_parts(model.stage_outputs(trunk, x), tuple(x.shape[-2:]))
        b, _, gh, gw = parts[0].shape
        for store, mean, part in zip(rows, means, parts):
            store.append(part.permute(0, 2, 3, 1).reshape(-1, part.shape[1]))
            mean.append(part.mean(dim=(2, 3)))
        image, row, col = np.meshgrid(np.arange(n_seen, n_seen + b), np.arange(gh), np.arange(gw), indexing="ij")
        sources.append(np.stack([image.ravel(), row.ravel(), col.ravel()], axis=1))
        for array in arrays:  # the retrieval trace shows these; JPEG keeps a bundle small
            Image.fromarray(array).save(thumbs / thumbnail_name(n_seen), quality=90)
            n_seen += 1
    return [torch.cat(r) for r in rows], np.concatenate(sources), [torch.cat(m) for m in means]


def score_arrays(model: PatchCore, trunk: Trunk, arrays: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    """Image scores and anomaly maps of uint8 pictures already at their model shape."""
    spec = TRUNKS[model.config.trunk]
    scores, maps = [], []
    for array in arrays:
        amap, score = model(trunk, normalise(array[None], spec.mean, spec.std))
        scores.append(float(score[0]))
        maps.append(amap[0].numpy())
    return scores, maps


def model_arrays(model: PatchCore, samples: list[Sample], desc: str) -> list[np.ndarray]:
    return [a for arrays, _ in image_batches(samples, model.input_shape, 1, desc) for a in arrays]


def fit(dataset: Dataset, out: Path, config: PatchCoreConfig, batch_size: int = 16, category: str | None = None,
        log=print, defects: list[Sample] | None = None) -> dict:
    """Fit, calibrate and save the detector into `out`; returns the facts written to bundle.json."""
    good = dataset.train_good
    if not good:
        raise DataError(f"{dataset.root} has no good training images to fit the detector on.")
    bank_samples, cal_samples = split_calibration(good, config.calibration_fraction, config.seed)
    trunk = create_trunk(config.trunk)
    model = PatchCore(config)
    timings = {}

    t0 = time.perf_counter()
    thumbs = out / RETRIEVAL_DIR
    thumbs.mkdir(parents=True, exist_ok=True)
    rows, sources, means = bank_features(model, trunk, bank_samples, thumbs, batch_size)
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.fit_layer_scales(rows)
    patches = torch.cat([r / s for r, s in zip(rows, model.layer_scales)], dim=1).numpy()
    model.image_features = torch.cat([m / s for m, s in zip(means, model.layer_scales)], dim=1)
    del rows
    with progress(None, f"coreset ({config.coreset_ratio:.0%} of {len(patches)} patches)",
                  total=int(round(config.coreset_ratio * len(patches))), unit="patch") as bar:
        facts = model.build_memory_bank(patches, sources, on_progress=lambda n, total: bar.update(n))
    del patches
    timings["coreset_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    good_arrays = model_arrays(model, cal_samples, "calibration")
    spec = TRUNKS[config.trunk]
    with torch.no_grad():  # one pass: the distances fit the border factors, then give the good pictures' scores
        distances = [model.nearest_distances(model.embed_image(trunk, normalise(a[None], spec.mean, spec.std)))
                     for a in good_arrays]
        model.fit_border_scale(distances)
        good_scores = [float(model.image_score(model.anomaly_map(model.scale_borders(d)))[0]) for d in distances]
    rng = np.random.default_rng(config.seed)
    synthetic = [synthesize(a, rng) for a in good_arrays for _ in range(SYNTHETIC_PER_IMAGE)]
    synthetic_scores, synthetic_maps = score_arrays(
        model, trunk, list(progress((s[0] for s in synthetic), "synthetic anomalies", total=len(synthetic))))
    real_scores = score_arrays(model, trunk, model_arrays(model, defects, "defects"))[0] if defects else None
    evidence = calibrate(np.asarray(good_scores), np.asarray(synthetic_scores),
                         None if real_scores is None else np.asarray(real_scores))
    evidence["synthetic"]["pointing_game"] = round(float(np.mean(
        [pointing_game(amap, mask) for amap, (_, mask, _) in zip(synthetic_maps, synthetic)])), 4)
    timings["calibration_s"] = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    threshold = evidence.pop("threshold")
    info = {
        "threshold": threshold,
        "threshold_rule": evidence.pop("threshold_rule"),
        "calibration": {"n_images": len(good_scores), "n_synthetic": len(synthetic_scores),
                        "n_real_defects": len(real_scores or []), **evidence,
                        "images": [relative_name(s.path, dataset.root) for s in cal_samples]},
        "bank_images": [relative_name(s.path, dataset.root) for s in bank_samples],
        "border_scale": [round(float(f), 4) for f in model.border_scale],
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
    parser.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default=defaults.index)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--defects", help="folder of a few real defective pictures to calibrate the threshold with "
                        "(default: synthetic anomalies made from held-out good pictures)")
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
               log=lambda msg: print(msg, file=sys.stderr), defects=defect_samples(args.defects))
    fit_facts = info["fit"]
    print(f"fitted PatchCore on {fit_facts['n_images']} images in {time.perf_counter() - start:.1f} s: "
          f"bank {fit_facts['bank_size']} of {fit_facts['n_patches']} patches, "
          f"threshold {info['threshold']:.4f} ({info['calibration']['n_images']} calibration images) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
