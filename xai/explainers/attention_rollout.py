"""Attention rollout (Abnar & Zuidema 2020) over the ViT head, written here because Captum lacks it.

Per block: fuse heads (mean, max or min), zero the weakest `discard_ratio` of entries (never the CLS-to-CLS
one), add the identity for the residual path, renormalise rows; multiply the blocks in order. The CLS
row over the patch tokens, reshaped to the token grid, is the map. Any square token grid works.
"""

from __future__ import annotations

import math

import torch

from xai.explainers.base import Explainer


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """[B, heads, T, T] per block -> [B, T, T] rolled-out attention."""
    result = None
    for attn in attentions:
        fused = {"mean": attn.mean(1), "max": attn.amax(1), "min": attn.amin(1)}[head_fusion]
        if discard_ratio > 0:
            b, t, _ = fused.shape
            flat = fused.reshape(b, -1).clone()
            n_drop = int(flat.shape[1] * discard_ratio)
            if n_drop:
                order = flat.argsort(dim=1)[:, :n_drop]
                # zero the weakest entries, except flat index 0 (the CLS-to-CLS entry)
                flat.scatter_(1, order, flat.gather(1, order) * (order == 0))
            fused = flat.reshape(b, t, t)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype).expand_as(fused)
        a = fused + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


class AttentionRollout(Explainer):
    name = "attention_rollout"
    caption = "Where the transformer head's summary token looks, through all its layers."
    report_card = True
    hooks = True
    component = "classifier_vit"
    defaults = {"head_fusion": "mean", "discard_ratio": 0.0}

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        model = self.model
        attentions: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: attentions.append(inp[0].detach()))
                 for m in model.head.attention_modules()]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for h in hooks:
                h.remove()
        rolled = rollout(attentions, self.params["head_fusion"], self.params["discard_ratio"])
        cls_row = rolled[:, 0, 1:]
        grid = int(math.isqrt(cls_row.shape[1]))
        return {"heatmap": cls_row.reshape(-1, grid, grid)}
