"""Fit the PatchCore detector on a dataset's good training images and write it into a bundle.

    python -m training.fit_patchcore --data DIR --out BUNDLE [--layout mvtec|imagefolder|elpv] [--defects DIR]

Pictures keep their shape: each is processed on a grid of its own aspect, shorter side at the detector's own
view (`short_side`, 320 px; the heads keep the bundle's input size).
The memory bank is a greedy coreset of `coreset_ratio` of all training patches, however many there are.
The decision threshold comes from data the bank never saw (`training.calibration`): a seeded share of the
good training images (`calibration_fraction`, at least 3) is held out, or with fewer than 30 pictures each is
held out once by k-fold cross-fitting (see CalibrationPlan), and scored together with synthetic anomalies made
from them, or with real defective pictures given by `--defects`. Every score, the rule and
the expected false-alarm and detection rates are stored with the model so the choice can be audited.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.anomalies import nuisance_copy, synthesize
from training.bundle_meta import describe
from training.calibration import calibrate, synthetic_per_image
from training.card import write_card
from training.choice import choose_settings
from training.cli import relative_name, run, training_parser
from training.data import DataError, Dataset, Sample, input_size_for, list_images, load_dataset
from training.features import image_batches
from training.jobs import progress
from training.score_model import fit_score_model
from xai.backbone import TRUNKS, Trunk, create_trunk, normalise
from xai.bundle import RETRIEVAL_DIR, save_patchcore, save_tensors, thumbnail_name
from xai.metrics import heatmap_auroc, pointing_game
from xai.patchcore import PatchCore, PatchCoreConfig, config_choices
from xai.score_model import ScoreModel

MIN_CALIBRATION = 3
CROSS_FIT_BELOW = 30  # fewer good pictures than this: each is held out once (k-fold) and the bank keeps them all
MAX_FOLDS = 5
NUISANCE_COPIES = 4  # one picture only: re-photographed-like copies stand in for unseen good pictures


@dataclass
class CalibrationPlan:
    """Which good pictures calibrate the threshold without being in the bank that scores them.

    held_out (30 pictures or more): a seeded 10 % (at least 3) never enters the bank, as PatchCore is usually
    calibrated. cross_fit (2-29): with few pictures every one counts, so the final bank keeps them all and the
    threshold comes from k-fold cross-fitting: each fold is scored against a bank built from the other folds,
    which gives a score for every picture instead of three. copies (1): nothing can be held out; nuisance copies
    of the picture (shifted, turned, re-lit) are scored instead, a lower bound on how far unseen good pictures
    will be, so expect more false alarms than the stored rate."""

    method: str
    folds: list[list[int]]  # picture indices held out by each fold
    bank: list[int]  # pictures in the final bank

    @property
    def held(self) -> list[int]:
        """Every picture some fold holds out, in order."""
        return sorted({i for fold in self.folds for i in fold})


def calibration_plan(n: int, fraction: float, seed: int) -> CalibrationPlan:
    """The plan for `n` good pictures (see CalibrationPlan); seeded, so a refit holds out the same pictures."""
    if n < 1:
        raise DataError("Need at least one good picture to fit the detector.")
    if n == 1:
        return CalibrationPlan("copies", [[0]], [0])
    order = np.random.default_rng(seed).permutation(n)
    if n < CROSS_FIT_BELOW:
        k = min(n, MAX_FOLDS)
        return CalibrationPlan("cross_fit", [sorted(order[i::k].tolist()) for i in range(k)], list(range(n)))
    held = set(order[:max(MIN_CALIBRATION, int(round(fraction * n)))].tolist())
    return CalibrationPlan("held_out", [sorted(held)], [i for i in range(n) if i not in held])


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


@dataclass
class Embedded:
    """Patch features of the good pictures, computed once: per-layer rows, their (picture, row, column) sources,
    per-layer picture means, and the model-shape pictures that calibration needs again."""

    rows: list[torch.Tensor]
    sources: np.ndarray
    means: list[torch.Tensor]
    arrays: dict[int, np.ndarray]


def embed_pictures(model: PatchCore, trunk: Trunk, samples: list[Sample], batch_size: int, keep: set[int],
                   thumbs: dict[int, Path]) -> Embedded:
    """Raw per-layer patch rows of every picture; keeps the model-shape arrays of `keep` and writes the
    thumbnails the retrieval trace shows (`thumbs`: picture -> file)."""
    spec = TRUNKS[model.config.trunk]
    rows: list[list[torch.Tensor]] = [[] for _ in range(model.config.n_parts)]
    means: list[list[torch.Tensor]] = [[] for _ in range(model.config.n_parts)]
    sources, arrays_kept = [], {}
    n_seen = 0
    for arrays, _ in image_batches(samples, model.input_shape, batch_size, "features"):
        with torch.no_grad():
            x = normalise(arrays, spec.mean, spec.std)
            parts = model.embed_parts(model.stage_outputs(trunk, x), x)
        b, _, gh, gw = parts[0].shape
        for store, mean, part in zip(rows, means, parts):
            store.append(part.permute(0, 2, 3, 1).reshape(-1, part.shape[1]))
            mean.append(part.mean(dim=(2, 3)))
        image, row, col = np.meshgrid(np.arange(n_seen, n_seen + b), np.arange(gh), np.arange(gw), indexing="ij")
        sources.append(np.stack([image.ravel(), row.ravel(), col.ravel()], axis=1))
        for array in arrays:
            if n_seen in keep:
                arrays_kept[n_seen] = array
            if n_seen in thumbs:  # JPEG keeps a bundle small
                Image.fromarray(array).save(thumbs[n_seen], quality=90)
            n_seen += 1
    return Embedded([torch.cat(r) for r in rows], np.concatenate(sources), [torch.cat(m) for m in means], arrays_kept)


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


def _bank(model: PatchCore, patches: np.ndarray, sources: np.ndarray, desc: str) -> dict:
    """Coreset of `patches` into `model`'s bank, with a progress bar."""
    cfg = model.config
    with progress(None, f"{desc} ({cfg.coreset_ratio:.0%} of {len(patches)} patches)",
                  total=int(round(cfg.coreset_ratio * len(patches))), unit="patch") as bar:
        return model.build_memory_bank(patches, sources, on_progress=lambda n, total: bar.update(n))


def build_bank(model: PatchCore, embedded: Embedded, plan: CalibrationPlan) -> tuple[np.ndarray, dict]:
    """Fit the parts' scales on the bank's pictures, then the coreset bank and the retrieval trace's picture
    features; returns every picture's scaled patch rows (calibration scores them again) and the bank's facts."""
    in_bank = np.isin(embedded.sources[:, 0], plan.bank)
    model.fit_layer_scales([r[torch.from_numpy(in_bank)] for r in embedded.rows])
    patches = model.scale_parts(embedded.rows).numpy()
    embedded.rows.clear()
    model.set_image_features([m[plan.bank] for m in embedded.means])
    bank_sources = embedded.sources[in_bank].copy()
    bank_sources[:, 0] = np.searchsorted(plan.bank, bank_sources[:, 0])  # picture -> its place among the bank's
    return patches, _bank(model, patches[in_bank], bank_sources, "coreset")


@dataclass
class HeldOut:
    """Nearest-bank distances of the good pictures the bank never saw, and of synthetic anomalies made from them."""

    good: list[torch.Tensor]
    synthetic: list[tuple]  # (picture, mask, kind) as training.anomalies.synthesize makes them
    synthetic_distances: list[torch.Tensor]
    good_pictures: list[np.ndarray] = field(default_factory=list)  # the pictures behind `good`
    synthetic_source: list[int] = field(default_factory=list)  # which of them each synthetic anomaly was made from


def score_held_out(model: PatchCore, trunk: Trunk, embedded: Embedded, patches: np.ndarray,
                   plan: CalibrationPlan) -> HeldOut:
    """Every held-out picture scored by a bank without it (the final bank, or one per fold when cross-fitting;
    nuisance copies with one picture), with synthetic anomalies made from each."""
    config, spec = model.config, TRUNKS[model.config.trunk]
    rng = np.random.default_rng(config.seed)

    def embedding(array: np.ndarray) -> torch.Tensor:
        return model.embed_image(trunk, normalise(array[None], spec.mean, spec.std))

    def embedded_picture(i: int) -> torch.Tensor:
        """Picture i's patch embedding [1, D, h, w], from the features computed once (no second forward)."""
        rows = embedded.sources[:, 0] == i
        h, w = (int(embedded.sources[rows, axis].max()) + 1 for axis in (1, 2))
        return torch.from_numpy(patches[rows]).view(1, h, w, -1).permute(0, 3, 1, 2)

    held = HeldOut([], [], [])
    per_image = synthetic_per_image(NUISANCE_COPIES if plan.method == "copies" else len(plan.held))
    with torch.no_grad():
        for k, fold in enumerate(plan.folds):
            scorer = model
            if plan.method == "cross_fit":  # a bank without this fold's pictures scores them
                scorer = PatchCore(config, model.layer_scales)
                keep = ~np.isin(embedded.sources[:, 0], fold)
                _bank(scorer, patches[keep], embedded.sources[keep], f"fold {k + 1}/{len(plan.folds)}")
            pictures = [(embedded.arrays[i], embedded_picture(i)) for i in fold]
            if plan.method == "copies":
                copies = [nuisance_copy(pictures[0][0], rng) for _ in range(NUISANCE_COPIES)]
                pictures = [(copy, embedding(copy)) for copy in copies]
            for array, picture in progress(pictures, "calibration"):
                held.good.append(scorer.nearest_distances(picture))
                held.good_pictures.append(array)
                for _ in range(per_image):
                    made = synthesize(array, rng)
                    held.synthetic.append(made)
                    held.synthetic_source.append(len(held.good_pictures) - 1)
                    held.synthetic_distances.append(scorer.nearest_distances(embedding(made[0])))
    return held


def threshold_evidence(model: PatchCore, held: HeldOut, real_scores: list[float] | None, plan: CalibrationPlan
                       ) -> dict:
    """The threshold and its evidence, from a model whose border factors are fitted: false alarms, the synthetic
    (and real) anomalies' detection, the map's pointing game and heatmap AUROC on them."""
    def scored(distances: torch.Tensor) -> tuple[float, np.ndarray]:
        amap = model.anomaly_map(model.scale_borders(distances))
        return float(model.image_score(amap)[0]), amap[0].numpy()

    good_scores = [scored(d)[0] for d in held.good]
    synthetic_scores, synthetic_maps = zip(*[scored(d) for d in held.synthetic_distances])
    evidence = calibrate(np.asarray(good_scores), np.asarray(synthetic_scores),
                         None if real_scores is None else np.asarray(real_scores))
    if plan.method == "copies":  # copies of a picture the bank holds are no unseen good pictures
        evidence["false_alarm_rate_unseen"] = None
    masks = [mask for _, mask, _ in held.synthetic]
    evidence["synthetic"]["pointing_game"] = round(float(np.mean(
        [pointing_game(amap, mask) for amap, mask in zip(synthetic_maps, masks)])), 4)
    aurocs = [a for a in (heatmap_auroc(amap, mask) for amap, mask in zip(synthetic_maps, masks)) if a is not None]
    evidence["synthetic"]["heatmap_auroc"] = round(float(np.mean(aurocs)), 4) if aurocs else None
    evidence["n_images"], evidence["n_synthetic"] = len(good_scores), len(synthetic_scores)
    return evidence


def fit_score_explainer(model: PatchCore, held: HeldOut, threshold: float, seed: int) -> ScoreModel | None:
    """The small model of the score that `shap_features` explains (training.score_model), fitted on every
    calibration picture (good and synthetic) with its map and score; None with too few pictures."""
    maps = [model.anomaly_map(model.scale_borders(d))[0].numpy() for d in [*held.good, *held.synthetic_distances]]
    pictures = [*held.good_pictures, *(made[0] for made in held.synthetic)]
    good = np.arange(len(pictures)) < len(held.good_pictures)
    groups = np.r_[np.arange(len(held.good_pictures)), held.synthetic_source]
    return fit_score_model(pictures, maps, [float(m.max()) for m in maps], good, groups, threshold, seed)


def fit(dataset: Dataset, out: Path, config: PatchCoreConfig, batch_size: int = 16, category: str | None = None,
        defects: list[Sample] | None = None, trunk: Trunk | None = None) -> dict:
    """Fit, calibrate and save the detector into `out`: the one Python API that the command line, the default
    builds, a visitor's part and the notebook call. Returns the facts written to bundle.json; `trunk` may be an
    already loaded one (the app's)."""
    good = dataset.train_good
    if not good:
        raise DataError(f"{dataset.root} has no good training images to fit the detector on.")
    plan = calibration_plan(len(good), config.calibration_fraction, config.seed)
    trunk = trunk or create_trunk(config.trunk)
    clock = time.perf_counter()
    timings = {}

    def lap(name: str) -> None:
        nonlocal clock
        timings[name], clock = round(time.perf_counter() - clock, 2), time.perf_counter()

    choice = None
    if config.choose:
        config, choice = choose_settings(config, trunk, good)
        lap("choice_s")
    model = PatchCore(config)
    thumbs = out / RETRIEVAL_DIR
    thumbs.mkdir(parents=True, exist_ok=True)
    embedded = embed_pictures(model, trunk, good, batch_size, set(plan.held),
                              {p: thumbs / thumbnail_name(b) for b, p in enumerate(plan.bank)})
    lap("features_s")
    patches, facts = build_bank(model, embedded, plan)
    lap("coreset_s")
    held = score_held_out(model, trunk, embedded, patches, plan)
    del patches
    model.fit_border_scale(held.good)  # the border factors, then every score they give
    real_scores = score_arrays(model, trunk, model_arrays(model, defects, "defects"))[0] if defects else None
    evidence = threshold_evidence(model, held, real_scores, plan)
    lap("calibration_s")
    score_model = fit_score_explainer(model, held, evidence["threshold"], config.seed)
    lap("score_model_s")
    names = [relative_name(s.path, dataset.root) for s in good]
    threshold = evidence.pop("threshold")
    info = {
        "threshold": threshold,
        "threshold_rule": evidence.pop("threshold_rule"),
        "calibration": {"method": plan.method, "folds": len(plan.folds), "n_images": evidence.pop("n_images"),
                        "n_synthetic": evidence.pop("n_synthetic"), "n_real_defects": len(real_scores or []),
                        **evidence, "images": [names[i] for i in sorted(plan.held)]},
        "bank_images": [names[i] for i in plan.bank],
        "border_scale": [round(float(f), 4) for f in model.border_scale],
        "fit": {**facts, **timings},
        "choice": choice,
        "score_model": score_model.to_meta() if score_model else None,
    }
    if score_model is not None:
        save_tensors(out, ScoreModel.WEIGHTS, score_model.to_tensors())
    save_patchcore(out, model, info)
    describe(out, dataset, config.trunk, config.input_size, category)
    write_card(out)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = PatchCoreConfig()
    parser = training_parser("python -m training.fit_patchcore", __doc__)
    parser.add_argument("--short-side", type=int, default=None,
                        help="the detector's view, fixed: each picture's shorter side in model pixels (default: "
                        f"chosen per part, {defaults.short_side} unless the evidence says otherwise)")
    parser.add_argument("--choose", action=argparse.BooleanOptionalAction, default=None,
                        help="choose the view and smoothing per part from the fit's own evidence (training.choice; "
                        "the default unless --short-side fixes the view; --no-choose: the default view and smoothing)")
    parser.add_argument("--coreset-ratio", type=float, default=defaults.coreset_ratio)
    parser.add_argument("--max-bank-size", type=int, default=defaults.max_bank_size)
    parser.add_argument("--index", choices=config_choices("index"), default=defaults.index)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--defects", help="folder of a few real defective pictures to calibrate the threshold with "
                        "(default: synthetic anomalies made from held-out good pictures)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = load_dataset(args.layout, args.data, args.test_fraction, args.seed)
    config = PatchCoreConfig(input_size=args.input_size or input_size_for(args.layout, Path(args.out)),
                             short_side=args.short_side or PatchCoreConfig.short_side,
                             choose=args.short_side is None if args.choose is None else args.choose,
                             coreset_ratio=args.coreset_ratio,
                             max_bank_size=args.max_bank_size, index=args.index, seed=args.seed)
    start = time.perf_counter()
    info = fit(dataset, Path(args.out), config, args.batch_size, args.category, defects=defect_samples(args.defects))
    fit_facts = info["fit"]
    print(f"fitted PatchCore on {fit_facts['n_images']} images in {time.perf_counter() - start:.1f} s: "
          f"bank {fit_facts['bank_size']} of {fit_facts['n_patches']} patches, "
          f"threshold {info['threshold']:.4f} ({info['calibration']['n_images']} calibration images) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
