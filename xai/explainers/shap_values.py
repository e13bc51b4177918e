"""SHAP (Lundberg & Lee 2017) with the real `shap` Partition explainer and an image masker (blur or inpaint).

The explained output is the classifier's probability of the target class, so the values add up (with the
base value) to that probability; they are shap's own numbers, returned unchanged, and the readable plot is
shap's `image_plot`.
"""

from __future__ import annotations

import numpy as np
import torch

from xai.explainers.base import Explainer
from xai.render import pyplot_png


class SHAP(Explainer):
    name = "shap"
    caption = "SHAP values of image regions for the defect probability (slow: 300 model runs)."
    slow = True  # many model runs: seconds
    defaults = {"evaluations": 300, "masker": "blur(32,32)", "batch": 10, "plot": True}
    signed = True

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        import shap

        ctx, p = self.context, self.params
        model = self.model
        mean = torch.tensor(ctx.mean).view(1, 3, 1, 1)
        std = torch.tensor(ctx.std).view(1, 3, 1, 1)
        images = ((inputs * std + mean) * 255.0).permute(0, 2, 3, 1).clamp(0, 255).numpy()  # [B, H, W, 3]
        heatmaps, attributions, extras = [], [], []
        for image, t in zip(images, target.tolist()):
            def predict(batch: np.ndarray, t=t) -> np.ndarray:
                x = (torch.from_numpy(np.ascontiguousarray(batch)).float().permute(0, 3, 1, 2) / 255.0 - mean) / std
                with torch.no_grad():
                    return model(x).softmax(-1)[:, t:t + 1].numpy()

            masker = shap.maskers.Image(p["masker"], image.shape)
            explainer = shap.Explainer(predict, masker, algorithm="partition", output_names=[ctx.labels[t]])
            values = explainer(image[None], max_evals=p["evaluations"], batch_size=p["batch"], silent=True)
            sv = np.asarray(values.values[0, ..., 0], dtype=np.float32)  # [H, W, 3]
            heatmaps.append(torch.from_numpy(sv.sum(-1)))
            attributions.append(torch.from_numpy(sv).permute(2, 0, 1))
            extra = {"base_value": float(np.asarray(values.base_values).ravel()[0]),
                     "output_value": float(predict(image[None])[0, 0])}
            if p["plot"]:
                extra["plot_png"] = self._plot(shap, values, image)
            extras.append(extra)
        return {"heatmap": torch.stack(heatmaps), "attribution": torch.stack(attributions), "extras": extras}

    @staticmethod
    def _plot(shap, values, image: np.ndarray) -> bytes:
        """shap.image_plot of this explanation, as PNG bytes."""
        return pyplot_png(lambda: shap.image_plot([values.values[0, ..., 0][None]], image[None] / 255.0, show=False))
