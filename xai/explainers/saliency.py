"""Vanilla gradient saliency (Simonyan et al. 2014) via Captum: max over channels of |d logit / d pixel|."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer


class Saliency(Explainer):
    name = "saliency"
    caption = "Pixels where a small change would move the defect score fastest."
    report_card = True

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import Saliency as CaptumSaliency

        grads = CaptumSaliency(self.model).attribute(inputs.clone().requires_grad_(), target=target, abs=True)
        return {"heatmap": grads.amax(dim=1), "attribution": grads}
