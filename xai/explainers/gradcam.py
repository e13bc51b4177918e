"""GradCAM (Selvaraju et al. 2017) via Captum's LayerGradCam on the CNN head's last conv block."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer


class GradCAM(Explainer):
    name = "gradcam"
    caption = "Regions whose features drive the CNN's defect score (coarse, 32 px cells)."
    report_card = True
    hooks = True
    defaults = {"relu": True}

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import LayerGradCam

        model = self.model
        cam = LayerGradCam(model, model.head.target_layer).attribute(
            inputs, target=target, relu_attributions=self.params["relu"])
        return {"heatmap": cam[:, 0]}
