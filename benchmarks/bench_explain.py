"""Median latency of every explanation method at 224 px on a bundle's models, beside straightforward reference calls.

    python -m benchmarks.bench_explain --bundle BUNDLE [--image PATH] [--repeats 5] [--methods a,b]

References are the plain library calls with their defaults (Captum: one forward per occlusion window, one big
batch for SmoothGrad and IG; shap: default batch size) timed in the same process, so the ratio survives
the machines' drift.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import median_ms
from xai.explainers import create_explainer
from xai.inspector import Inspector

BUDGET_MS = {"gradcam": 60, "gradcam_pp": 60, "saliency": 60, "attention_rollout": 60, "anomaly_map": 60,
             "retrieval": 60, "cam": 60, "smoothgrad": 1000, "integrated_gradients": 1200, "occlusion": 2000,
             "shap": 4000, "score_cam": 4000, "shap_features": 1000}  # score_cam: the slow methods' budget


def references(inspector: Inspector, x: torch.Tensor) -> dict:
    """The straightforward calls DESIGN.md's reference figures were taken with."""
    from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion, Saliency

    from xai.backbone import create_trunk
    from xai.bundle import load_head
    from xai.explainers import Classifier

    # plain modules: batch norms unfused, default memory format, as a straightforward script would have them
    model = Classifier(create_trunk(inspector.trunk.name, fuse=False).to(memory_format=torch.contiguous_format),
                       load_head(inspector.bundle, "classifier_cnn")).eval()
    refs = {
        "gradcam": lambda: LayerGradCam(model, model.head.target_layer).attribute(x, target=1),
        "saliency": lambda: Saliency(model).attribute(x, target=1),
        "smoothgrad": lambda: NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=25, target=1),
        "integrated_gradients": lambda: IntegratedGradients(model).attribute(x, target=1, n_steps=32),
        "occlusion": lambda: Occlusion(model).attribute(x, target=1, sliding_window_shapes=(3, 32, 32),
                                                      strides=(3, 16, 16)),
    }

    def shap_default():
        import shap

        image = ((x[0] * 0.5 + 0.5) * 255).permute(1, 2, 0).numpy()

        def f(batch):
            t = (torch.from_numpy(batch).float().permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
            with torch.no_grad():
                return model(t).softmax(-1)[:, 1:2].numpy()
        explainer = shap.Explainer(f, shap.maskers.Image("blur(32,32)", image.shape))
        explainer(image[None], max_evals=300, silent=True)
    refs["shap"] = shap_default
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--image", help="an image to explain (default: generated noise)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", help="comma-separated subset")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    inspector = Inspector.from_source(args.bundle)
    image = (Image.open(args.image).convert("RGB") if args.image else
             Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3)).astype(np.uint8)))
    x = inspector.preprocess(image)
    methods = args.methods.split(",") if args.methods else inspector.methods()
    refs = {} if args.no_reference or "classifier_cnn" not in inspector.heads else references(inspector, x)
    print(f"torch threads {torch.get_num_threads()}; median of {args.repeats} runs, ms")
    print(f"{'method':<22}{'ours':>9}{'reference':>11}{'ratio':>7}{'budget':>8}")
    for method in methods:
        explainer = create_explainer(method, inspector.explain_context(),
                                     **({"plot": False} if method == "shap" else {}))
        xm = inspector.model_input(image, inspector.component_of(method))  # PatchCore methods: the own aspect
        ours = median_ms(lambda e=explainer, xm=xm: e.explain(xm), args.repeats)
        ref = median_ms(refs[method], max(1, args.repeats // 2)) if method in refs else None
        budget = BUDGET_MS.get(method)
        ref_text = f"{ref:11.0f}" if ref else f"{'-':>11}"
        ratio = f"{ours / ref:7.2f}" if ref else " " * 7
        flag = "" if budget is None or ours <= budget else "  OVER"
        print(f"{method:<22}{ours:9.0f}{ref_text}{ratio}{budget or '':>8}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
