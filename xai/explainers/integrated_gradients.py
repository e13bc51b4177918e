"""Integrated gradients (Sundararajan et al. 2017) via Captum, with black, blurred or noise baselines."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer
from xai.patchcore import gaussian_blur


def baseline_for(inputs: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """Reference input: black (pixel value 0), the image blurred (sigma 10 px), or uniform pixel noise."""
    if kind == "black":
        return torch.full_like(inputs, -1.0)  # pixel 0 after (x - 0.5) / 0.5
    if kind == "blur":
        b, c, h, w = inputs.shape
        return gaussian_blur(inputs.reshape(b * c, h, w), 10.0).reshape(b, c, h, w)
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(inputs.shape, generator=generator) * 2 - 1
    raise ValueError(f"unknown baseline {kind!r}: use black, blur or noise")


class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    caption = "Each pixel's share of the score gap between this image and a blurred copy."
    slow = True  # many model runs: seconds
    defaults = {"steps": 32, "baseline": "blur", "batch": 8, "seed": 0}
    signed = True

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import IntegratedGradients as CaptumIG

        p = self.params
        baselines = baseline_for(inputs, p["baseline"], p["seed"])
        attr, delta = CaptumIG(self.model).attribute(
            inputs, baselines=baselines, target=target, n_steps=p["steps"], internal_batch_size=p["batch"],
            return_convergence_delta=True)
        extras = [{"convergence_delta": float(d)} for d in delta]
        return {"heatmap": attr.sum(dim=1), "attribution": attr, "extras": extras}
