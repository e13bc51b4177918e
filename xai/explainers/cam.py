"""CAM (Zhou et al. 2016), written here because Captum lacks it: the CNN head ends in global average pooling and one
linear layer, so the class map is exact and needs no gradient: the last block's activations weighted by the linear
layer's row for the class. The map's mean plus the class's bias is the class logit (tested)."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer
from xai.heads import HEAD_INPUT_STAGE


class CAM(Explainer):
    name = "cam"
    caption = "The CNN's exact class map: last-block features weighted by the defect class's output weights."
    report_card = True
    signed = True  # negative where the features speak against the class

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        model = self.model
        with torch.no_grad():
            activations = model.head.activations(model.trunk(inputs, upto=HEAD_INPUT_STAGE)[HEAD_INPUT_STAGE])
            weights = model.head.classifier.weight[target]  # [B, K]: the class's row of the linear layer
            return {"heatmap": torch.einsum("bk,bkhw->bhw", weights, activations)}
