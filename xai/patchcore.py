"""PatchCore-style anomaly detector: locally aggregated trunk features, coreset memory bank, FAISS kNN.

Pure model code (anomalib's split): the training glue that streams images, calibrates the threshold
and writes bundles lives in `training.fit_patchcore`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai.coreset import kcenter_greedy, random_projection

# faiss-cpu leaves exact searches of fewer than 128000 queries off BLAS. DESIGN.md measured BLAS (threshold 20)
# 4-14x faster on a 50k bank; on our capped 8k bank it measured 1.1-1.6x *slower* (benchmarks/bench_detect.py),
# so the default is kept and no process-wide FAISS setting is touched.
FLAT_INDEX_MAX = 20_000  # "auto" index: exact search up to this many bank vectors, HNSW beyond


@dataclass
class PatchCoreConfig:
    """Hyper-parameters of the detector (stored in bundle.json)."""

    trunk: str = "efficientnet_lite0"
    input_size: int = 224
    layers: tuple[int, ...] = (1, 2, 4)  # trunk stages at stride 4, 8 and 16
    feature_stride: int = 8  # the patch grid: every layer is resampled to input_size / 8
    aggregation: int = 3  # local neighbourhood (3x3 average) that gives each patch context
    coreset_ratio: float = 0.1
    max_bank_size: int = 8192  # keeps one image's exact kNN search within ~15 ms on 2 CPU cores
    projection_dim: int = 128  # coreset distances are computed in a random projection of this size
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, in input pixels
    neighbours: int = 1  # patch score = distance to the nearest bank patch
    index: str = "auto"  # "flat" (exact), "hnsw", or "auto"
    seed: int = 0
    calibration_fraction: float = 0.1  # good images held out of the bank to calibrate the threshold

    @property
    def grid(self) -> int:
        return self.input_size // self.feature_stride

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PatchCoreConfig:
        data = dict(data)
        data["layers"] = tuple(data.get("layers", cls.layers))
        return cls(**data)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at 4 sigma."""
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, H, W] maps with reflect padding."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps)
    radius = (kernel.numel() - 1) // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def build_index(bank: np.ndarray, kind: str = "auto"):
    """FAISS index over the memory bank: exact (flat L2) for small banks, HNSW for large ones."""
    import faiss

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if kind == "auto":
        kind = "flat" if len(bank) <= FLAT_INDEX_MAX else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatL2(bank.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(bank.shape[1], 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        raise ValueError(f"unknown index kind {kind!r}: use flat, hnsw or auto")
    index.add(bank)
    return index


def search(index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and ids of the k nearest bank vectors."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class PatchCore(nn.Module):
    """Memory bank of normal patch features; scores patches by distance to their nearest normal patch."""

    def __init__(self, config: PatchCoreConfig, layer_scales: torch.Tensor | None = None,
                 memory_bank: torch.Tensor | None = None, bank_source: torch.Tensor | None = None,
                 image_features: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        n_layers = len(config.layers)
        self.register_buffer("layer_scales", torch.ones(n_layers) if layer_scales is None else layer_scales)
        self.register_buffer("memory_bank", torch.zeros(0, 0) if memory_bank is None else memory_bank)
        # (training image, row, column) of every bank patch: lets the retrieval trace show where it came from.
        self.register_buffer("bank_source", torch.zeros(0, 3, dtype=torch.int32) if bank_source is None
                             else bank_source)
        # mean patch embedding of every bank image: the retrieval trace's "nearest normal images"
        self.register_buffer("image_features", torch.zeros(0, 0) if image_features is None else image_features)
        self.index = None

    # -- features ------------------------------------------------------------------------------
    def embed_parts(self, stage_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw per-layer patch features [B, C_l, g, g]: 3x3-averaged, then resampled to the patch grid."""
        grid, k = self.config.grid, self.config.aggregation
        parts = []
        for layer in self.config.layers:
            feat = F.avg_pool2d(stage_outputs[layer], k, stride=1, padding=k // 2, count_include_pad=False)
            if feat.shape[-1] > grid:
                feat = F.adaptive_avg_pool2d(feat, grid)
            elif feat.shape[-1] < grid:
                feat = F.interpolate(feat, size=(grid, grid), mode="bilinear", align_corners=False)
            parts.append(feat)
        return parts

    def embed(self, stage_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Patch embeddings [B, D, g, g]: every layer's part divided by its fitted scale, concatenated."""
        parts = self.embed_parts(stage_outputs)
        return torch.cat([part / scale for part, scale in zip(parts, self.layer_scales)], dim=1)

    def fit_layer_scales(self, parts: list[torch.Tensor]) -> None:
        """Set each layer's scale to its mean patch norm, so that no layer dominates distances by magnitude."""
        self.layer_scales = torch.stack([part.norm(dim=1).mean() for part in parts]).float()

    @staticmethod
    def flatten(embedding: torch.Tensor) -> np.ndarray:
        """[B, D, g, g] -> [B*g*g, D] float32 rows in (image, row, column) order."""
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]).contiguous().numpy()

    # -- memory bank ---------------------------------------------------------------------------
    def build_memory_bank(self, patches: np.ndarray, n_images: int) -> dict:
        """Coreset-subsample `patches` ([n_images*g*g, D]) into the bank and index it; returns fit facts."""
        cfg = self.config
        projection = random_projection(patches.shape[1], cfg.projection_dim, cfg.seed)
        n_select = max(1, min(int(round(cfg.coreset_ratio * len(patches))), cfg.max_bank_size))
        if n_select >= len(patches):
            chosen = np.arange(len(patches))
        else:
            chosen = np.sort(kcenter_greedy(patches @ projection, n_select, seed=cfg.seed))
        g = cfg.grid
        source = np.stack([chosen // (g * g), (chosen % (g * g)) // g, chosen % g], axis=1)
        self.memory_bank = torch.from_numpy(np.ascontiguousarray(patches[chosen]))
        self.bank_source = torch.from_numpy(source.astype(np.int32))
        self.index = build_index(self.memory_bank.numpy(), cfg.index)
        return {"n_patches": int(len(patches)), "bank_size": int(len(chosen)), "n_images": n_images}

    def ensure_index(self) -> None:
        if self.index is None:
            self.index = build_index(self.memory_bank.numpy(), self.config.index)

    # -- scoring -------------------------------------------------------------------------------
    def patch_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest bank patch: [B, g, g]."""
        self.ensure_index()
        b, _, h, w = embedding.shape
        dist, _ = search(self.index, self.flatten(embedding), self.config.neighbours)
        dist = np.sqrt(np.maximum(dist, 0.0)).mean(axis=1)
        return torch.from_numpy(dist).view(b, h, w)

    def anomaly_map(self, patch_scores: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Patch scores upsampled (bilinear) to the input size and Gaussian-smoothed: [B, H, W]."""
        size = size or self.config.input_size
        up = F.interpolate(patch_scores.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
        return gaussian_blur(up.squeeze(1), self.config.sigma * size / self.config.input_size)

    @staticmethod
    def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image score: the maximum of the smoothed anomaly map."""
        return anomaly_map.flatten(1).amax(dim=1)

    @torch.no_grad()
    def forward(self, stage_outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps [B, H, W] and image scores [B] from the trunk's stage outputs."""
        amap = self.anomaly_map(self.patch_scores(self.embed(stage_outputs)))
        return amap, self.image_score(amap)
