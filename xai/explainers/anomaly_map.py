"""PatchCore's anomaly map: distance of each patch to its nearest normal patch, upsampled and smoothed."""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer


class AnomalyMap(Explainer):
    name = "anomaly_map"
    caption = "Where this part differs from every good part the detector has seen."
    report_card = True
    component = "patchcore"

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        pc = self.context.patchcore
        if pc is None:
            raise ValueError("this bundle has no PatchCore detector; run training.fit_patchcore on it")
        with torch.no_grad():
            amap, scores = pc(self.context.trunk, inputs)
        return {"heatmap": amap, "extras": [{"image_score": float(s)} for s in scores]}
