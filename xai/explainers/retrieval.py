"""Retrieval trace: the training evidence behind PatchCore's verdict.

It answers "this region looks like nothing we have seen; the closest normal parts look like these":
the nearest good training images by global feature (cosine), the most anomalous patch's nearest bank
patches (FAISS) with their distances and where they come from, and a heatmap of each patch's distance to
the single closest good image (re-embedded from its bundle thumbnail).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xai.backbone import normalise, resize_rgb
from xai.explainers.base import Explainer
from xai.patchcore import search


@dataclass
class RetrievalIndex:
    """Where the bank images' thumbnails live (bundle `retrieval/`) and their names in the training data."""

    folder: Path
    names: list[str]

    def thumbnail(self, index: int) -> Path:
        from xai.bundle import thumbnail_name

        return self.folder / thumbnail_name(index)

    def relative(self, index: int) -> str:
        """Bank image `index`'s thumbnail as a bundle-relative name (what JSON carries: no server paths)."""
        return f"{self.folder.name}/{self.thumbnail(index).name}"

    def normalised_thumbnail(self, index: int, shape: tuple[int, int], mean, std) -> torch.Tensor:
        """Bank image `index` as a normalised model input [1, 3, h, w] of `shape` (h, w)."""
        with Image.open(self.thumbnail(index), formats=["JPEG"]) as thumb:  # thumbnails are JPEG; nothing else parsed
            array = resize_rgb(thumb, tuple(shape))[None]
        return normalise(array, mean, std)


def nearest_images(patchcore, embedding: torch.Tensor, k: int):
    """Top-k bank images by cosine similarity of mean patch embeddings ([D, h, w] -> torch.topk result)."""
    sims = F.cosine_similarity(embedding.mean(dim=(1, 2))[None], patchcore.image_features)
    return sims.topk(min(k, len(sims)))


def nearest_good_image(context, inputs: torch.Tensor) -> torch.Tensor:
    """For each image in the batch, its closest good training image (normalised, resized to the batch's shape): the
    reference a defect can be 'deleted' towards."""
    pc = context.patchcore
    with torch.no_grad():
        embedding = pc.embed_image(context.trunk, inputs)
    return torch.cat([context.retrieval.normalised_thumbnail(int(nearest_images(pc, emb, 1).indices[0]),
                                                             tuple(inputs.shape[-2:]), context.mean, context.std)
                      for emb in embedding])


class Retrieval(Explainer):
    name = "retrieval"
    caption = "The closest good training images and patches, and how far this one is from them."
    report_card = True
    component = "patchcore"
    needs = ("retrieval",)  # the bank images' thumbnails
    defaults = {"images": 3, "patches": 3}

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        ctx, pc = self.context, self.context.patchcore
        if pc is None or ctx.retrieval is None or not len(pc.image_features):
            raise ValueError("this bundle has no retrieval data; refit it with training.fit_patchcore")
        pc.ensure_index()
        heatmaps, extras = [], []
        stride = pc.config.feature_stride
        shape = tuple(inputs.shape[-2:])
        with torch.no_grad():
            embedding = pc.embed_image(ctx.trunk, inputs)
        grid = embedding.shape[-1]  # patch columns
        for emb in embedding:
            flat = pc.flatten(emb[None])  # [g*g, D]
            # 1. nearest good images by global (mean patch) feature
            top = nearest_images(pc, emb, self.params["images"])
            # 2. the most anomalous patch and its nearest bank patches
            distances = pc.nearest_distances(emb[None])
            patch_scores = pc.scale_borders(distances).flatten()
            worst = int(torch.argmax(patch_scores))  # the map's own scores, border rings included
            d_k, ids = search(pc.index, flat[worst:worst + 1], self.params["patches"])
            fitted = (ids[0] >= 0) & (ids[0] < len(pc.bank_source))  # rows reviews added have no thumbnail
            d_k, sources = d_k[:, fitted], pc.bank_source[torch.from_numpy(ids[0][fitted])].tolist()
            # 3. per-patch distance to the closest good image, re-embedded from its thumbnail
            reference = ctx.retrieval.normalised_thumbnail(int(top.indices[0]), shape, ctx.mean, ctx.std)
            with torch.no_grad():
                neighbour = pc.flatten(pc.embed_image(ctx.trunk, reference))
            heat = torch.cdist(torch.from_numpy(flat), torch.from_numpy(neighbour)).amin(dim=1)
            heatmaps.append(heat.reshape(emb.shape[-2:]))
            extras.append({
                "nearest_images": [{"index": int(i), "name": ctx.retrieval.names[int(i)],
                                    "similarity": round(float(s), 4), "thumbnail": ctx.retrieval.relative(int(i))}
                                   for s, i in zip(top.values, top.indices)],
                "input_shape": list(shape),
                "anomalous_patch": {"row": worst // grid, "col": worst % grid,
                                    "distance": round(float(distances.flatten()[worst]), 4),
                                    "box": _box(worst // grid, worst % grid, stride)},
                "nearest_patches": [{"image": int(img), "name": ctx.retrieval.names[int(img)], "row": int(r),
                                     "col": int(c), "distance": round(float(np.sqrt(max(dk, 0))), 4),
                                     "thumbnail": ctx.retrieval.relative(int(img)), "box": _box(r, c, stride)}
                                    for dk, (img, r, c) in zip(d_k[0], sources)],
            })
        return {"heatmap": torch.stack(heatmaps), "extras": extras}


def _box(row: int, col: int, stride: int) -> list[int]:
    """Input-pixel box [x0, y0, x1, y1] of a patch with its 3x3 aggregation context."""
    return [max(0, (col - 1) * stride), max(0, (row - 1) * stride), (col + 2) * stride, (row + 2) * stride]
