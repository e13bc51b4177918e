"""The detector's view and smoothing, chosen per part at fit time from the fit's own evidence.

A fixed view serves neither end: small pictures (tiles) enlarged to it may lose what their own pixels show, while
thin defects on other parts need every pixel a larger view gives. So every candidate (VIEWS x SIGMAS: the view's
shorter side, whether a smaller picture is enlarged to it, the map's smoothing) is scored on evidence the fit
has: a bank of a sample of the good training pictures, other good pictures held out of it, and subtle synthetic
defects made from each held-out picture at its own resolution (at most the finest view's): a one-pixel crack, a
small spot and a large faint area, each from faint to plain (`training.anomalies.SUBTLE`). Every candidate sees
the same defects; candidates of one view share its trunk pass and its bank, and the smoothing is free.

A candidate's separation is the mean, over the defects, of the probability that a good picture scores below
them under the model fitted to the held-out good scores (`xai.false_alarms`, the threshold's); it goes on rising
where an AUROC would already be 1. The default (DEFAULT_VIEW, DEFAULT_SIGMA: round three's, measured on every
dev set) stays unless another candidate separates better with CONFIDENCE over a bootstrap of the held-out
pictures (each with its own defects): the evidence is a few dozen pictures, and a view is not changed on noise.
Of the candidates that pass, the best separation wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from training.anomalies import SUBTLE
from training.cli import load_sample_image
from training.data import Sample
from training.jobs import progress
from xai.backbone import TRUNKS, Trunk, normalise, resize_rgb
from xai.false_alarms import share_below
from xai.metrics import auroc
from xai.patchcore import PatchCore, PatchCoreConfig, build_index


@dataclass(frozen=True)
class View:
    """How pictures are brought to the detector: the shorter side and whether a smaller picture is enlarged."""

    short_side: int
    enlarge: bool

    @property
    def label(self) -> str:
        return f"{self.short_side}" + (" enlarged" if self.enlarge else " own pixels")


VIEWS = (View(320, False), View(224, False), View(224, True), View(320, True))  # a view that enlarges no picture
# of the part is the same as the own-pixels view before it, and is scored once, under that name
SIGMAS = (4.0, 2.0, 8.0)  # the map's smoothing in model pixels
DEFAULT_VIEW, DEFAULT_SIGMA = View(320, True), 4.0  # kept unless the evidence says otherwise
CHOSEN_FIELDS = ("short_side", "enlarge", "sigma")  # a config that sets one of these by hand fixes it: no choice
CONFIDENCE = 0.95  # another candidate must separate better in this share of the bootstrap's resamples ...
BOOTSTRAP = 400  # ... of the held-out pictures
PROBE_PICTURES = 12  # held-out good pictures scored per view ...
BANK_PICTURES = 24  # ... against a bank of every patch of this many good pictures ...
BANK_PATCHES = 40_000  # ... (a seeded sample of them beyond this many)
DEFECT_ROUNDS = 2  # each held-out picture gets this many of each subtle defect
TRUNK_BATCH = 8  # pictures of one shape through the trunk at once
RULE = ("the view and smoothing that best separate subtle synthetic defects from held-out good pictures (mean "
        "probability that a good picture scores below each defect, under the threshold's model of the good scores); "
        f"the default ({DEFAULT_VIEW.short_side} px, smaller pictures enlarged, smoothing {DEFAULT_SIGMA:g}) is kept "
        f"unless another separates better in {CONFIDENCE:.0%} of {BOOTSTRAP} bootstrap resamples of the held-out "
        "pictures")


def costliest(config: PatchCoreConfig) -> PatchCoreConfig:
    """`config` at the view of VIEWS that processes the most pixels: what a fit that chooses may cost at most."""
    return replace(config, short_side=max(v.short_side for v in VIEWS), enlarge=any(v.enlarge for v in VIEWS))


def separation(good: np.ndarray, anomalies: np.ndarray) -> np.ndarray:
    """Mean over the last axis of `anomalies` of the modelled share of `good` (last axis) scoring below them (see
    the module docstring); leading axes (bootstrap resamples) are kept, a float for 1-D inputs."""
    return share_below(good, anomalies).mean(axis=-1)


def decide(good: np.ndarray, anomalies: np.ndarray, default: int, seed: int = 0) -> tuple[int, np.ndarray]:
    """The winning candidate and each candidate's share of resamples in which it separates better than the default.
    `good` [C, P]: each candidate's scores of the P held-out pictures; `anomalies` [C, P, K]: of the K defects made
    from each. The bootstrap resamples pictures with their own defects, the same resamples for every candidate."""
    c, p, k = anomalies.shape
    draws = np.random.default_rng(seed).integers(0, p, (BOOTSTRAP, p))
    sep = separation(good[:, draws], anomalies[:, draws].reshape(c, BOOTSTRAP, p * k))  # [C, BOOTSTRAP]
    better = (sep > sep[default]).mean(axis=1)
    full = separation(good, anomalies.reshape(c, p * k))
    passing = [i for i in range(c) if better[i] >= CONFIDENCE]
    return (max(passing, key=lambda i: full[i]) if passing else default), better


def _view_scores(config: PatchCoreConfig, view: View, trunk: Trunk, bank: list, probe: list, anomalies: list,
                 seed: int) -> tuple[dict[float, tuple[list[float], list[float]]], str]:
    """Image scores of the probe and anomaly pictures for every smoothing at `view`, and the view's typical shape.
    `bank`, `probe`, `anomalies` are (native width, native height, reference uint8 array) triples."""
    from PIL import Image

    model = PatchCore(replace(config, short_side=view.short_side, enlarge=view.enlarge, choose=False))

    def at_view(items: list) -> list[np.ndarray]:
        return [resize_rgb(Image.fromarray(array), model.input_shape(w, h)) for w, h, array in items]

    spec = TRUNKS[config.trunk]

    def batches(items: list):
        """Normalised batches of up to TRUNK_BATCH pictures of one shape, in order."""
        arrays = at_view(items)
        start = 0
        while start < len(arrays):
            stop = start + 1
            while stop < len(arrays) and stop - start < TRUNK_BATCH and arrays[stop].shape == arrays[start].shape:
                stop += 1
            yield normalise(np.stack(arrays[start:stop]), spec.mean, spec.std)
            start = stop

    with torch.no_grad():
        # raw parts, batch by batch: the layer scales are fitted on the bank before anything is scaled
        bank_parts = [model.embed_parts(model.stage_outputs(trunk, x), x) for x in batches(bank)]
        model.fit_layer_scales([torch.cat([p[k].permute(0, 2, 3, 1).reshape(-1, p[k].shape[1]) for p in bank_parts])
                                for k in range(config.n_parts)])
        patches = np.concatenate([PatchCore.flatten(model.scale_parts(p)) for p in bank_parts])
    if len(patches) > BANK_PATCHES:
        patches = patches[np.sort(np.random.default_rng(seed).choice(len(patches), BANK_PATCHES, replace=False))]
    model.memory_bank = torch.from_numpy(np.ascontiguousarray(patches))
    model.index = build_index(patches, config.index, config.ivf_probes)
    with torch.no_grad():
        good, bad = ([d[None] for x in batches(items) for d in model.nearest_distances(model.embed_image(trunk, x))]
                     for items in (probe, anomalies))
    model.fit_border_scale(good)
    scores = {}
    for sigma in SIGMAS:
        model.config = replace(model.config, sigma=sigma)
        scores[sigma] = tuple([float(model.image_score(model.anomaly_map(model.scale_borders(d)))[0]) for d in ds]
                              for ds in (good, bad))
    h, w = model.input_shape(*bank[0][:2])
    return scores, f"{h}x{w}"


def choose_settings(config: PatchCoreConfig, trunk: Trunk, good: list[Sample]) -> tuple[PatchCoreConfig, dict]:
    """`config` with the chosen view and smoothing, and the evidence (every candidate's scores) for bundle.json.
    The evidence is a seeded split of its own: up to PROBE_PICTURES good pictures (a third of them at most) are
    scored against a bank of up to BANK_PICTURES others; the fit's calibration is untouched by it."""
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(good)).tolist()
    n_probe = min(PROBE_PICTURES, len(good) // 3)
    probe_ids, bank_ids = sorted(order[:n_probe]), sorted(order[n_probe:n_probe + BANK_PICTURES])
    if n_probe < 2:
        return config, {"rule": RULE, "skipped": f"{len(good)} good pictures: too few to hold some out of a bank"}
    # every picture once at its reference resolution: its own pixels, at most the largest view
    reference = PatchCore(replace(costliest(config), enlarge=False))

    def decoded(i: int) -> tuple[int, int, np.ndarray]:
        image = load_sample_image(good[i])
        return image.width, image.height, resize_rgb(image, reference.input_shape(*image.size))

    bank = [decoded(i) for i in bank_ids]
    probe = [decoded(i) for i in probe_ids]
    anomalies = [(w, h, make(array, rng)[0]) for w, h, array in probe
                 for _ in range(DEFECT_ROUNDS) for make in SUBTLE.values()]

    def shapes(view: View) -> tuple:
        return tuple(PatchCore(replace(config, short_side=view.short_side, enlarge=view.enlarge)).input_shape(w, h)
                     for w, h, _ in bank + probe)

    candidates, good_scores, defect_scores, seen = [], [], [], {}
    for view in progress(VIEWS, "choosing the view", unit="view"):
        key = shapes(view)
        if key in seen:  # the same model shapes as an earlier view for every picture: nothing new to learn
            continue
        seen[key] = view
        scores, shape = _view_scores(config, view, trunk, bank, probe, anomalies, config.seed)
        for sigma, (good_view, bad_view) in scores.items():
            candidates.append({"short_side": view.short_side, "enlarge": view.enlarge, "sigma": sigma,
                               "view": view.label, "shape": shape,
                               "separation": round(float(separation(good_view, bad_view)), 4),
                               "auroc": round(auroc([False] * len(good_view) + [True] * len(bad_view),
                                                    good_view + bad_view), 4)})
            good_scores.append(good_view)
            defect_scores.append(bad_view)
    default_view = seen[shapes(DEFAULT_VIEW)]
    default = next(i for i, c in enumerate(candidates)
                   if View(c["short_side"], c["enlarge"]) == default_view and c["sigma"] == DEFAULT_SIGMA)
    winner, better = decide(np.asarray(good_scores), np.asarray(defect_scores).reshape(len(candidates), len(probe), -1),
                            default, config.seed)
    for candidate, share in zip(candidates, better):
        candidate["better_than_default"] = round(float(share), 3)
    candidates[default]["default"] = True
    chosen = {k: candidates[winner][k] for k in ("short_side", "enlarge", "sigma")}
    evidence = {"rule": RULE, "chosen": chosen, "candidates": candidates, "n_good": len(probe),
                "n_bank_pictures": len(bank), "n_anomalies": len(anomalies),
                "seconds": round(time.perf_counter() - start, 2)}
    return replace(config, **chosen), evidence
