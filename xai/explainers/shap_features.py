"""Why the score is this number: exact SHAP values (shap's tree explainer) of readable properties of the picture
and its anomaly map, for the small model of the score the detector's fit made (xai.score_model), drawn as shap's
own waterfall. The values explain that model; its fidelity (measured on pictures it was not fitted on) travels
with every answer, and a chart of a model that does not follow the score says so in its title."""

from __future__ import annotations

import numpy as np
import torch

from xai.explainers.base import Explainer
from xai.render import pyplot_png
from xai.score_model import PROPERTIES


class SHAPFeatures(Explainer):
    name = "shap_features"
    component = "patchcore"
    needs = ("score_model",)  # made by the detector's fit (training.score_model)
    caption = ("Why the score is this number: what each readable property of the picture and its map adds to a "
               "small model of the score (SHAP waterfall under Evidence, with the model's fidelity; the panel shows "
               "the anomaly map the properties were read from).")
    report_card = True
    surrogate = True
    defaults = {"plot": True}

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        ctx = self.context
        model = ctx.score_model
        if ctx.patchcore is None or model is None:
            raise ValueError("this bundle's detector has no score model; refit it with training.fit_patchcore")
        with torch.no_grad():
            maps, scores = ctx.patchcore(ctx.trunk, inputs)
        mean, std = torch.tensor(ctx.mean).view(1, 3, 1, 1), torch.tensor(ctx.std).view(1, 3, 1, 1)
        pictures = ((inputs * std + mean) * 255.0).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        features = np.stack([model.properties(p, m.numpy()) for p, m in zip(pictures, maps)])
        base, values = model.explain(features)
        outputs = model.predict(features)
        extras = []
        for row, shap_row, output, score in zip(features, values, outputs, scores.tolist()):
            extra = {"features": {k: round(float(v), 4) for k, v in zip(PROPERTIES, row)},
                     "values": {k: float(v) for k, v in zip(PROPERTIES, shap_row)},
                     "base_value": base, "output": float(output), "score": float(score),
                     "threshold": model.threshold, "fidelity": dict(model.fidelity), "faithful": model.faithful}
            follows = model.follows(float(output), float(score))
            extra["follows_this_picture"] = follows
            if not model.faithful or not follows:
                extra["warning"] = self.warning(model, float(output), float(score))
            if self.params["plot"]:
                extra["plot_png"] = self._plot(base, shap_row, row, model, float(score), extra.get("warning"))
                extra["plot_caption"] = "SHAP waterfall of the score's readable properties (shap.plots.waterfall)"
            extras.append(extra)
        return {"heatmap": maps, "extras": extras}

    @staticmethod
    def warning(model, output: float, score: float) -> str:
        if not model.faithful:
            return (f"Low fidelity: the small model follows the detector's score only loosely on pictures it was not "
                    f"fitted on (R² {model.fidelity.get('r2') or 0:.2f}); these values explain that model, not the "
                    "detector.")
        return (f"Outside what the small model learned: it gives {output:.3g} where the detector scores {score:.3g} "
                f"(on unseen calibration pictures it missed by {model.fidelity.get('rmse') or 0:.2g} on average); "
                "these values explain the model's output, not this score.")

    @staticmethod
    def _plot(base: float, values: np.ndarray, features: np.ndarray, model, score: float, warning: str | None
              ) -> bytes:
        """shap's waterfall of one answer, titled with the true score and the model's fidelity, as PNG bytes."""
        import shap

        fidelity = model.fidelity
        title = (f"detector score {score:.3g} (threshold {model.threshold:.3g}); small model f(x) = "
                 f"{base + values.sum():.3g}\nfidelity on unseen pictures: R² {fidelity.get('r2') or 0:.2f}, "
                 f"same verdict {fidelity.get('verdict_agreement') or 0:.0%}")
        if warning:
            title = ("LOW FIDELITY" if not model.faithful else "OUTSIDE WHAT THE MODEL LEARNED") + \
                ": read as a rough guide only\n" + title

        def draw() -> None:
            import matplotlib.pyplot as plt

            shap.plots.waterfall(shap.Explanation(values=values, base_values=base, data=np.round(features, 2),
                                                  feature_names=list(PROPERTIES.values())),
                                 max_display=len(PROPERTIES), show=False)
            plt.gcf().suptitle(title, fontsize=9, y=1.06, color="darkred" if warning else "black")
        return pyplot_png(draw)
