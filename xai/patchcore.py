"""PatchCore-style anomaly detector: locally aggregated trunk features, coreset memory bank, FAISS kNN.

Pure model code (anomalib's split): the training glue that streams images, calibrates the threshold
and writes bundles lives in `training.fit_patchcore`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai.coreset import kcenter_greedy, random_projection

# Exact search for small banks, IVF-Flat beyond (HNSW lost true neighbours; docs/benchmarks.md "How the bank is
# searched" has the measurements); the process-wide BLAS threshold is left alone.
FLAT_INDEX_MAX = 4096  # "auto" index: exact search up to this many bank vectors, IVF beyond
IVF_PROBES_BEFORE = 16  # what bundles written before ivf_probes was a field were searched with
# IVF's error is one-sided (a missed neighbour makes a patch look further, never nearer), so the patches that
# decide a picture's score are searched again with more probes; the shares and probes: docs/benchmarks.md.
REFINE_SHARE = 0.02  # each picture's patches with the largest approximate distances (at least REFINE_MIN) ...
REFINE_MIN = 16
REFINE_PROBES = 4  # ... are searched again with this many times the probes
IVF_CELLS_PER_ROOT = 2  # 2 sqrt(N) cells: k-means costs ~N, so rebuilding at load stays ~1 s for 100k patches


# Before these config versions a stored config lacked the fields they added; in order, oldest first. A field's
# metadata says which version added it (`since`) and what its absence meant (`before`), and its bounds.
FORMAT_2, ROUND_3, IVF_PROBES, DOWNSAMPLE, REFINE, ROUND_4, CHOOSE = CONFIG_VERSIONS = (
    "format 2", "round 3", "ivf probes", "downsample", "refine", "round 4", "choose")


def number(default: float | None, lo: float, hi: float, **meta) -> Any:
    """A config number a bundle may carry, bounded to [lo, hi]: beyond these no bundle of ours goes."""
    return field(default=default, metadata={"bounds": (lo, hi), **meta})


def choice(default: str, allowed: tuple[str, ...], **meta) -> Any:
    """A config word a bundle may carry: one of `allowed`."""
    return field(default=default, metadata={"choices": allowed, **meta})


def flag(default: bool, **meta) -> Any:
    """A config true-or-false field."""
    return field(default=default, metadata={"flag": True, **meta})


@dataclass
class PatchCoreConfig:
    """Hyper-parameters of the detector (stored in bundle.json); each field's bounds and history in its metadata."""

    trunk: str = "efficientnet_lite0"
    # the bundle's input side: the square the picture is squashed to when keep_aspect is off
    input_size: int = number(224, 32, 1024)
    # the detector's view: the picture's shorter side in model pixels (keep_aspect on); before: the input size
    short_side: int = number(320, 32, 2048, since=ROUND_3,
                             before=lambda stored: stored.get("input_size", PatchCoreConfig.input_size))
    # a picture whose shorter side is below the view is enlarged to it; off: kept at its pixels
    enlarge: bool = flag(True, since=ROUND_4, before=True)  # before: every picture was brought to the view
    layers: tuple[int, ...] = (1, 2, 4)  # trunk stages at stride 4, 8 and 16
    feature_stride: int = number(8, 8, 8)  # the patch grid: every layer is resampled to the stride-8 grid
    aggregation: int = number(3, 1, 9)  # local neighbourhood (3x3 average) that gives each patch context
    # a finer stage onto the stride-8 grid: "max" (per channel, over 2x2 cells) or "avg" (before)
    downsample: str = choice("max", ("avg", "max"), since=DOWNSAMPLE, before="avg")
    # patches (8 px each) averaged into the low-frequency colour part; 0 (before): no colour part
    colour_window: int = number(5, 0, 15, since=ROUND_3, before=0)
    coreset_ratio: float = number(0.1, 1e-6, 1.0)  # share of all training patches kept in the bank (PatchCore's 10 %)
    # how the bank's patches are chosen: "coreset" (greedy k-center) or "random" (a baseline)
    sampler: str = choice("coreset", ("coreset", "random"))
    max_bank_size: int | None = None  # optional cap; None keeps coreset_ratio of every data set, however large
    projection_dim: int = number(128, 1, 1024)  # coreset distances are computed in a random projection of this size
    sigma: float = number(4.0, 0.0, 32.0)  # Gaussian smoothing of the anomaly map, in model pixels
    neighbours: int = number(1, 1, 32)  # patch score = distance to the nearest bank patch
    # "flat" (exact), "ivf", "hnsw", or "auto" (exact up to FLAT_INDEX_MAX vectors, IVF beyond)
    index: str = choice("auto", ("auto", "flat", "ivf", "hnsw"))
    # IVF cells searched per patch (of 2 sqrt(N)); docs/benchmarks.md measures it
    ivf_probes: int = number(8, 1, 4096, since=IVF_PROBES, before=IVF_PROBES_BEFORE)
    # each picture's farthest patches searched again with more probes (see REFINE_SHARE); before: no second search
    refine: bool = flag(True, since=REFINE, before=False)
    # "norm": each part over its mean patch norm (fit_layer_scales); "none": raw parts
    part_scaling: str = choice("norm", ("norm", "none"))
    border_correction: bool = flag(True)  # border rings' scores scaled to the interior's level (fit_border_scale)
    # the fit chooses the view and smoothing per part from its own evidence (training.choice); before: nothing chosen
    choose: bool = flag(True, since=CHOOSE, before=False)
    seed: int = number(0, 0, 2**31 - 1)
    calibration_fraction: float = number(0.1, 0.0, 0.9)  # good images held out of the bank to calibrate the threshold
    # process the picture on a grid of its own aspect instead of squashing it square; format 1 (before) did not
    keep_aspect: bool = flag(True, since=FORMAT_2, before=False)
    max_side: int = number(1024, 32, 4096)  # the longer side in model pixels is capped here (cost grows with area)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PatchCoreConfig:
        """Read a stored config of any version: CONFIG_MIGRATIONS bring it up to today's, step by step."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for _, step in CONFIG_MIGRATIONS:
            data = step(data)
        data["layers"] = tuple(data.get("layers", cls.layers))
        return cls(**data)

    def problems(self) -> list[str]:
        """What is out of range in this config (empty when it is usable). A bundle is data from whoever published
        it: its numbers decide what the server allocates, so each is bounded (its field's metadata) before use."""
        def in_bounds(value: object, lo: float, hi: float) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi

        spec = {f.name: f.metadata for f in fields(self)}
        numbers_ok = {name: in_bounds(getattr(self, name), *m["bounds"]) for name, m in spec.items() if "bounds" in m}
        found = [f"{name} = {getattr(self, name)!r} (allowed {spec[name]['bounds'][0]}-{spec[name]['bounds'][1]})"
                 for name, ok in numbers_ok.items() if not ok]
        if not isinstance(self.layers, (tuple, list)) or not self.layers \
                or any(not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= 5 for x in self.layers) \
                or len(set(self.layers)) != len(self.layers):
            found.append(f"layers = {self.layers!r} (distinct trunk stages 0-5)")
        if numbers_ok["aggregation"] and self.aggregation % 2 == 0:
            found.append(f"aggregation = {self.aggregation!r} (odd)")
        if numbers_ok["max_side"] and numbers_ok["short_side"] and self.max_side < self.short_side:
            found.append(f"max_side = {self.max_side!r} (at least short_side, {self.short_side!r})")
        if self.max_bank_size is not None and (not isinstance(self.max_bank_size, int)
                                               or isinstance(self.max_bank_size, bool) or self.max_bank_size < 1):
            found.append(f"max_bank_size = {self.max_bank_size!r} (a positive whole number or none)")
        found += [f"{name} = {getattr(self, name)!r} (one of {', '.join(m['choices'])})"
                  for name, m in spec.items() if "choices" in m
                  and (not isinstance(getattr(self, name), str) or getattr(self, name) not in m["choices"])]
        found += [f"{name} = {getattr(self, name)!r} (true or false)" for name, m in spec.items()
                  if m.get("flag") and not isinstance(getattr(self, name), bool)]
        return found

    @property
    def n_parts(self) -> int:
        """Parts of a patch embedding: one per trunk layer, plus the colour part when it is on."""
        return len(self.layers) + (1 if self.colour_window else 0)


def config_choices(name: str) -> tuple[str, ...]:
    """The words PatchCoreConfig's field `name` may hold (its metadata), for command lines' --choices."""
    return next(f.metadata["choices"] for f in fields(PatchCoreConfig) if f.name == name)


def fields_added(version: str) -> Callable[[dict], dict]:
    """The migration step to `version`: each field it added, absent from a stored config, takes the value its
    absence meant (the field's `before`, read from the config as stored)."""
    def step(data: dict) -> dict:
        added = {f.name: f.metadata["before"] for f in fields(PatchCoreConfig)
                 if f.metadata.get("since") == version and f.name not in data}
        return {**data, **{k: v(data) if callable(v) else v for k, v in added.items()}}
    return step


def square_to_aspect(data: dict) -> dict:
    """Format 1 -> 2 (recognised by its config lacking keep_aspect): square pictures, exact search for its
    "auto" index (its banks were capped at 8,192) and no border factors."""
    if "keep_aspect" in data:
        return data
    index = "flat" if data.get("index", "auto") == "auto" else data["index"]
    return fields_added(FORMAT_2)({**data, "index": index, "border_correction": data.get("border_correction", False)})


# Every step a stored config goes through, oldest version first; each leaves a config of a newer version alone.
CONFIG_MIGRATIONS: tuple[tuple[str, Callable[[dict], dict]], ...] = (
    (FORMAT_2, square_to_aspect), *((version, fields_added(version)) for version in CONFIG_VERSIONS[1:]))


def blur_radius(sigma: float) -> int:
    """The smoothing kernel's half-width: the Gaussian truncated at 4 sigma."""
    return max(1, int(math.ceil(4 * sigma)))


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [B, H, W] maps (torchvision's, reflect padding), truncated at 4 sigma. Two 1-D passes:
    torchvision convolves with the full 2-D kernel, 33 x 33 at sigma 4, which took 44 ms a 320 x 416 map against
    10 ms for the same blur in two passes (equal to 2e-6), and every detect and calibration map is blurred."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    if sigma <= 0:
        return maps
    size, sigmas = 2 * blur_radius(sigma) + 1, [float(sigma), float(sigma)]
    return blur(blur(maps.unsqueeze(1), [size, 1], sigmas), [1, size], sigmas).squeeze(1)


def ring_index(shape: tuple[int, int], rings: int | None = None) -> torch.Tensor:
    """[h, w] ints: each patch's distance (in patches) to the nearest border, capped at `rings` (BORDER_RINGS):
    that value is the interior."""
    h, w = shape
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    dist = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))
    return dist.clamp(max=BORDER_RINGS if rings is None else rings)


def border_factors(border_scale: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[h, w] factor map: border_scale on the border rings (as many as it has), 1 inside."""
    return torch.cat([border_scale.float(), torch.ones(1)])[ring_index(shape, len(border_scale))]


def build_index(bank: np.ndarray, kind: str = "auto", probes: int = IVF_PROBES_BEFORE):
    """FAISS index over the memory bank: exact (flat L2) for small banks, IVF-Flat (2 sqrt(N) k-means cells,
    `probes` of them searched) for large ones; "hnsw" is kept for comparison."""
    import faiss

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if kind == "auto":
        kind = "flat" if len(bank) <= FLAT_INDEX_MAX else "ivf"
    dim = bank.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "ivf":
        n_cells = max(1, min(int(IVF_CELLS_PER_ROOT * math.sqrt(len(bank))), len(bank) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, n_cells)
        index.cp.seed = 0
        index.cp.max_points_per_centroid = 39  # k-means on a sample of 39 points a cell: the index is rebuilt at load
        index.train(bank)
        index.nprobe = min(probes, n_cells)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"unknown index kind {kind!r}: use flat, ivf, hnsw or auto")
    index.add(bank)
    return index


def search(index, queries: np.ndarray, k: int = 1, probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and ids of the k nearest bank vectors (an IVF index: `probes` cells for this call
    instead of its own nprobe; the index itself is not changed, so concurrent searches are safe)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if probes is None or not hasattr(index, "nprobe"):
        return index.search(queries, k)
    import faiss

    return index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=min(probes, index.nlist)))


def refine_farthest(index, queries: np.ndarray, distances: np.ndarray, k: int = 1) -> np.ndarray:
    """`distances` [B, P] (mean of k nearest, not squared) with each picture's farthest patches searched again at
    REFINE_PROBES times the index's probes (IVF only; an exact index is returned as it is)."""
    if not hasattr(index, "nprobe") or index.nprobe >= index.nlist:
        return distances
    b, p = distances.shape
    n_top = min(p, max(REFINE_MIN, int(np.ceil(REFINE_SHARE * p))))
    top = np.argpartition(-distances, n_top - 1, axis=1)[:, :n_top]  # [B, n_top] per picture
    rows = (top + np.arange(b)[:, None] * p).ravel()
    again, _ = search(index, queries[rows], k, REFINE_PROBES * index.nprobe)
    refined = distances.copy().ravel()
    refined[rows] = np.minimum(refined[rows], np.sqrt(np.maximum(again, 0.0)).mean(axis=1))
    return refined.reshape(b, p)


TRUNK_STRIDE = 32  # model inputs are multiples of the trunk's coarsest stride, so stages align exactly
BORDER_QUANTILE = 0.99  # the level compared between rings: the upper tail, which decides image scores
BORDER_RINGS = 3  # rings of patches (8 px each) along the border whose normal score level is fitted
MIN_SIDE = 64  # a picture is never processed with a shorter side than this (extreme aspects are squashed to it)


class PatchCore(nn.Module):
    """Memory bank of normal patch features; scores patches by distance to their nearest normal patch."""

    def __init__(self, config: PatchCoreConfig, layer_scales: torch.Tensor | None = None,
                 memory_bank: torch.Tensor | None = None, bank_source: torch.Tensor | None = None,
                 image_features: torch.Tensor | None = None, border_scale: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.register_buffer("layer_scales", torch.ones(config.n_parts) if layer_scales is None else layer_scales)
        self.register_buffer("memory_bank", torch.zeros(0, 0) if memory_bank is None else memory_bank)
        # (training image, row, column) of every bank patch: lets the retrieval trace show where it came from.
        self.register_buffer("bank_source", torch.zeros(0, 3, dtype=torch.int32) if bank_source is None
                             else bank_source)
        # mean patch embedding of every bank image: the retrieval trace's "nearest normal images"
        self.register_buffer("image_features", torch.zeros(0, 0) if image_features is None else image_features)
        # factor on the patch scores of each ring of patches along the picture's border (ring 0 outermost; see
        # fit_border_scale); all ones (no correction) until fitted, and in bundles that predate it
        self.register_buffer("border_scale", torch.ones(BORDER_RINGS) if border_scale is None else border_scale)
        self.index = None

    # -- geometry ------------------------------------------------------------------------------
    def input_shape(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) in model pixels for a picture of `width` x `height`: the shorter side at short_side and
        the longer one in proportion (at most max_side), both multiples of the trunk's stride so that every stage
        lines up with the patch grid exactly (no padding); square (input_size) when keep_aspect is off. Without
        `enlarge`, a picture smaller than the view keeps its own pixels (at least MIN_SIDE): enlarging adds no
        information, and pictures of many sizes then share one pixel scale."""
        cfg, s = self.config, TRUNK_STRIDE
        if not cfg.keep_aspect:
            return cfg.input_size, cfg.input_size
        scale = min(cfg.short_side / min(width, height), cfg.max_side / max(width, height))
        if not cfg.enlarge and scale >= 1.0:
            return tuple(max(MIN_SIDE, max(1, side // s) * s) for side in (height, width))
        h, w = (max(MIN_SIDE, round(side * scale / s) * s) for side in (height, width))
        return h, w

    def stage_outputs(self, trunk: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's stages for a normalised batch [B, 3, h, w] up to the deepest layer PatchCore reads."""
        return trunk(x, upto=max(self.config.layers))

    # -- features ------------------------------------------------------------------------------
    def embed_parts(self, stage_outputs: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        """Raw patch features [B, C, h/8, w/8] of the normalised batch `x` [B, 3, h, w]: each trunk layer
        3x3-averaged on its own grid, then resampled to the stride-8 patch grid (a finer stage by each channel's
        maximum over its 2x2 cells: the strongest response of a thin line survives, where the average mixed it
        with the texture beside it; docs/benchmarks.md measures it); then the colour part.

        The colour part is the picture itself averaged over colour_window x colour_window patches (40 px at 5): a
        3x3 patch of trunk features sees texture, not a faint stain larger than itself, and the trunk's
        normalisations discard the slow shifts of brightness and colour that such a stain is made of. Fitted
        layer scales weigh it like any layer. On a generated weave with a faint blotch it took image AUROC
        from 0.615 to 1.000; see docs/benchmarks.md for every dev set."""
        cfg = self.config
        grid = (x.shape[-2] // cfg.feature_stride, x.shape[-1] // cfg.feature_stride)
        k = cfg.aggregation
        parts = []
        for layer in cfg.layers:
            feat = F.avg_pool2d(stage_outputs[layer], k, stride=1, padding=k // 2, count_include_pad=False)
            if feat.shape[-1] > grid[1]:
                pool = F.adaptive_max_pool2d if cfg.downsample == "max" else F.adaptive_avg_pool2d
                feat = pool(feat, grid)
            elif tuple(feat.shape[-2:]) != grid:
                feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
            parts.append(feat)
        if cfg.colour_window:
            w = cfg.colour_window
            colour = F.adaptive_avg_pool2d(x.float(), grid)
            parts.append(F.avg_pool2d(colour, w, stride=1, padding=w // 2, count_include_pad=False))
        return parts

    def embed(self, stage_outputs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, D, h/8, w/8] of the batch `x`: every part divided by its fitted scale, concatenated."""
        return self.scale_parts(self.embed_parts(stage_outputs, x))

    def scale_parts(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Raw parts (per-part maps [B, C_l, h, w] or rows [N, C_l]) each over its fitted scale, concatenated."""
        return torch.cat([part / scale for part, scale in zip(parts, self.layer_scales)], dim=1)

    def embed_image(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of a normalised batch [B, 3, h, w] prepared at `input_shape`."""
        return self.embed(self.stage_outputs(trunk, x), x)

    def fit_layer_scales(self, parts: list[torch.Tensor]) -> None:
        """Set each part's scale to its mean patch norm, so that no part dominates distances by magnitude (all ones
        with part_scaling "none": the plain PatchCore's raw concatenation). `parts` are per-part patch rows [N, C_l]."""
        if self.config.part_scaling == "none":
            self.layer_scales = torch.ones(len(parts))
            return
        self.layer_scales = torch.stack([part.norm(dim=1).mean() for part in parts]).float()

    def set_image_features(self, means: list[torch.Tensor]) -> None:
        """The bank pictures' mean patch embeddings (the retrieval trace's nearest images), from each part's raw
        per-picture means [n, C_l], scaled as the patches are."""
        self.image_features = self.scale_parts(means)

    @staticmethod
    def flatten(embedding: torch.Tensor) -> np.ndarray:
        """[B, D, h, w] -> [B*h*w, D] float32 rows in (image, row, column) order."""
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]).contiguous().numpy()

    # -- memory bank ---------------------------------------------------------------------------
    def build_memory_bank(self, patches: np.ndarray, sources: np.ndarray,
                          on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Coreset-subsample `patches` [N, D] (with their (image, row, column) `sources` [N, 3]) into the bank and
        index it; returns fit facts. `on_progress(picked, total)` follows the coreset selection."""
        cfg = self.config
        projection = random_projection(patches.shape[1], cfg.projection_dim, cfg.seed)
        n_select = max(1, int(round(cfg.coreset_ratio * len(patches))))
        if cfg.max_bank_size:
            n_select = min(n_select, cfg.max_bank_size)
        if n_select >= len(patches):
            chosen = np.arange(len(patches))
        elif cfg.sampler == "random":
            chosen = np.sort(np.random.default_rng(cfg.seed).choice(len(patches), n_select, replace=False))
        elif cfg.sampler != "coreset":
            raise ValueError(f"unknown bank sampler {cfg.sampler!r}: use coreset or random")
        else:
            report = None if on_progress is None else (lambda n: on_progress(n, n_select))
            chosen = np.sort(kcenter_greedy(patches @ projection, n_select, seed=cfg.seed, on_progress=report))
        self.memory_bank = torch.from_numpy(np.ascontiguousarray(patches[chosen]))
        self.bank_source = torch.from_numpy(np.ascontiguousarray(sources[chosen]).astype(np.int32))
        self.index = build_index(self.memory_bank.numpy(), cfg.index, cfg.ivf_probes)
        return {"n_patches": int(len(patches)), "bank_size": int(len(chosen)),
                "n_images": int(sources[:, 0].max()) + 1 if len(sources) else 0,
                "index": type(self.index).__name__}

    def ensure_index(self) -> None:
        if self.index is None:
            self.rebuild_index()

    def extend_index(self, rows: np.ndarray) -> None:
        """Add `rows` [R, D] to a copy of the index, then swap it in: a search running meanwhile keeps the old one.
        Nothing is trained again (an IVF index files them under its cells); ids past the bank are added rows."""
        import faiss

        self.ensure_index()
        index = faiss.clone_index(self.index)
        index.add(np.ascontiguousarray(rows, dtype=np.float32))
        self.index = index

    def rebuild_index(self, rows: np.ndarray | None = None) -> None:
        """The index of the fitted bank (as at load) with `rows` added after it, swapped in whole."""
        index = build_index(self.memory_bank.numpy(), self.config.index, self.config.ivf_probes)
        if rows is not None and len(rows):
            index.add(np.ascontiguousarray(rows, dtype=np.float32))
        self.index = index

    # -- scoring -------------------------------------------------------------------------------
    def nearest_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest bank patch: [B, h, w]."""
        self.ensure_index()
        b, _, h, w = embedding.shape
        queries = self.flatten(embedding)
        dist, _ = search(self.index, queries, self.config.neighbours)
        dist = np.sqrt(np.maximum(dist, 0.0)).mean(axis=1).reshape(b, h * w)
        if self.config.refine:
            dist = refine_farthest(self.index, queries, dist, self.config.neighbours)
        return torch.from_numpy(np.ascontiguousarray(dist)).view(b, h, w)

    def patch_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Patch anomaly scores [B, h, w]: nearest-bank distances, border rings scaled to the interior's level."""
        return self.scale_borders(self.nearest_distances(embedding))

    def scale_borders(self, distances: torch.Tensor) -> torch.Tensor:
        """Nearest-bank distances [B, h, w] with the border rings scaled by their fitted factors."""
        return distances * border_factors(self.border_scale, distances.shape[-2:])

    def fit_border_scale(self, distances: list[torch.Tensor]) -> None:
        """From nearest-bank distances [1, h, w] of good pictures the bank never saw: each border ring's factor is
        the interior's BORDER_QUANTILE distance over the ring's (at most 1; 1 where either is undefined or zero).
        Border patches see the picture's edge, a context rarer in the bank than any interior one, so good borders
        sit further from it; without this the map's maximum drifts to the rim of textured parts. All ones when
        border_correction is off (the plain PatchCore)."""
        if not self.config.border_correction:
            self.border_scale = torch.ones(BORDER_RINGS)
            return
        rings: list[list[np.ndarray]] = [[] for _ in range(BORDER_RINGS + 1)]
        for dist in distances:
            ring = ring_index(dist.shape[-2:])
            for r in range(BORDER_RINGS + 1):
                rings[r].append(dist[0][ring == r].numpy())
        levels = [float(np.quantile(np.concatenate(r), BORDER_QUANTILE)) if sum(len(x) for x in r) else None
                  for r in rings]
        interior = levels[-1]
        factors = [min(1.0, interior / level) if interior is not None and level else 1.0 for level in levels[:-1]]
        self.border_scale = torch.tensor(factors, dtype=torch.float32)

    def anomaly_map(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """Patch scores upsampled (bilinear) to model pixels and Gaussian-smoothed: [B, h, w]."""
        s = self.config.feature_stride
        size = (patch_scores.shape[-2] * s, patch_scores.shape[-1] * s)
        up = F.interpolate(patch_scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return gaussian_blur(up.squeeze(1), self.config.sigma)

    @staticmethod
    def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image score: the maximum of the smoothed anomaly map."""
        return anomaly_map.flatten(1).amax(dim=1)

    @torch.no_grad()
    def forward(self, trunk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps [B, h, w] and image scores [B] of a normalised batch prepared at `input_shape`."""
        amap = self.anomaly_map(self.patch_scores(self.embed_image(trunk, x)))
        return amap, self.image_score(amap)
