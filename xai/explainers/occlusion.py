"""Occlusion (Zeiler & Fergus 2014) via Captum: drop in the target logit when a window is greyed out."""

from __future__ import annotations

import torch

from xai.explainers.base import ExplainContext, Explainer


class Occlusion(Explainer):
    name = "occlusion"
    caption = "How much hiding each window (1/7 of the image side) lowers the defect score (slow: many model runs)."
    slow = True  # many model runs: seconds
    # window/stride None: 1/7 and 1/14 of the input side (32/16 px at 224, 46/23 at 320), so a bundle trained at
    # a larger size gets the same 13 x 13 grid of windows instead of 4x the model runs
    defaults = {"window": None, "stride": None, "batch": 8}
    signed = True

    def __init__(self, context: ExplainContext, **params):
        super().__init__(context, **params)
        side = context.input_size
        if self.params["window"] is None:
            self.params["window"] = max(1, round(side / 7))
        if self.params["stride"] is None:
            self.params["stride"] = max(1, self.params["window"] // 2)

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import Occlusion as CaptumOcclusion

        p = self.params
        attr = CaptumOcclusion(self.model).attribute(
            inputs, target=target, sliding_window_shapes=(3, p["window"], p["window"]),
            strides=(3, p["stride"], p["stride"]), baselines=0.0, perturbations_per_eval=p["batch"])
        return {"heatmap": attr.sum(dim=1) / 3.0, "attribution": attr}
