"""SmoothGrad (Smilkov et al. 2017): Captum's NoiseTunnel over Saliency.

The noise level is in the normalised input's scale: with mean/std 0.5 inputs span [-1, 1], and the default
0.3 is 15 % of that range (the paper's 10-20 %), not Captum's default stdev of 1.0 (half the range).
"""

from __future__ import annotations

import torch

from xai.explainers.base import Explainer


class SmoothGrad(Explainer):
    name = "smoothgrad"
    caption = "Saliency averaged over noisy copies: steadier, less speckled."
    slow = True  # many model runs: seconds
    defaults = {"samples": 25, "noise": 0.3, "batch": 5, "seed": 0}

    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        p = self.params
        with torch.random.fork_rng(devices=[]):  # seeded noise; the process's generator is left as it was
            torch.manual_seed(p["seed"])
            grads = NoiseTunnel(CaptumSaliency(self.model)).attribute(
                inputs, nt_type="smoothgrad", nt_samples=p["samples"], nt_samples_batch_size=p["batch"],
                stdevs=p["noise"], target=target, abs=True)
        return {"heatmap": grads.amax(dim=1), "attribution": grads}
