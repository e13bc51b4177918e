"""Occlusion (Zeiler & Fergus 2014) via Captum: drop in the target logit when a window is greyed out."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer


class Occlusion(Explainer):
    name = "occlusion"
    defaults = {"window": 32, "stride": 16, "batch": 8}
    signed = True

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import Occlusion as CaptumOcclusion

        p = self.params
        attr = CaptumOcclusion(self.model).attribute(
            inputs, target=target, sliding_window_shapes=(3, p["window"], p["window"]),
            strides=(3, p["stride"], p["stride"]), baselines=0.0, perturbations_per_eval=p["batch"])
        return {"heatmap": attr.sum(dim=1) / 3.0, "attribution": attr}
