"""The explainer suite: shapes and finiteness, agreement with references, hand-computed cases, planted features."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from synthetic import add_defect, texture
from xai.backbone import preprocess
from xai.bundle import load
from xai.explainers import METHODS, ExplainContext, create_explainer
from xai.explainers.attention_rollout import rollout
from xai.inspector import Inspector

FAST = {"score_cam": {"channels": 32}, "smoothgrad": {"samples": 4, "batch": 4},
        "integrated_gradients": {"steps": 8, "batch": 8}, "occlusion": {"window": 56, "stride": 56},
        "shap": {"evaluations": 60, "batch": 30, "plot": True}}

GRADIENT_METHODS = (  # the methods that backpropagate to the input
    "gradcam", "gradcam_pp", "saliency", "smoothgrad", "integrated_gradients")


@pytest.fixture(scope="module")
def inspector(classifier_bundle, trunk):
    return Inspector(load(classifier_bundle), trunk)


@pytest.fixture(scope="module")
def defect_image():
    rng = np.random.default_rng(21)
    return add_defect(texture(rng), rng, "blob")[0]


def test_every_method_is_available_and_registered(inspector):
    assert set(inspector.methods()) == set(METHODS) == {
        "anomaly_map", "retrieval", "cam", "gradcam", "gradcam_pp", "saliency", "smoothgrad", "integrated_gradients",
        "attention_rollout", "occlusion", "score_cam", "shap", "shap_features"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_returns_a_finite_input_sized_map(inspector, defect_image, method):
    exp = inspector.explain(defect_image, method, **FAST.get(method, {}))
    # the model input of the method's component: the detector's view (320 px) or the heads' square (224 px)
    side = inspector.patchcore.config.short_side if METHODS[method].component == "patchcore" else inspector.input_size
    assert exp.method == method and exp.heatmap.shape == (side, side) and exp.heatmap.dtype == np.float32
    assert np.isfinite(exp.heatmap).all() and np.ptp(exp.heatmap) > 0
    assert exp.ms > 0 and "component" in exp.parameters
    if METHODS[method].component != "patchcore":
        assert exp.target_label == "blob"
    assert exp.to_json()["method"] == method


def test_deterministic_given_a_seed(inspector, defect_image):
    for method in ("smoothgrad", "shap"):
        a = inspector.explain(defect_image, method, **FAST[method]).heatmap
        b = inspector.explain(defect_image, method, **FAST[method]).heatmap
        np.testing.assert_array_equal(a, b)


def test_batches_give_one_explanation_per_image(inspector, defect_image):
    x = preprocess([__import__("PIL.Image").Image.fromarray(defect_image)] * 2)
    out = create_explainer("gradcam", inspector.explain_context()).attribute(x)
    assert len(out) == 2
    np.testing.assert_allclose(out[0].heatmap, out[1].heatmap, rtol=1e-4, atol=1e-6)


def test_shap_values_are_shaps_own_and_add_up(inspector, defect_image):
    exp = inspector.explain(defect_image, "shap", **FAST["shap"])
    # Partition SHAP values are exact Owen values of the masked game: they sum to f(x) - f(fully masked).
    total = float(exp.attribution.sum())
    assert total == pytest.approx(exp.extras["output_value"] - exp.extras["base_value"], abs=1e-3)
    assert exp.extras["plot_png"][:8] == b"\x89PNG\r\n\x1a\n"


class SmoothHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(112, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, f):
        return self.fc(nn.functional.softplus(self.conv(f)).mean(dim=(2, 3)))


def test_randomised_heads_are_freshly_initialised_models_that_still_carry_a_signal(inspector, defect_image):
    import math

    context = inspector.explain_context()
    random = context.randomised(seed=0)
    trained_cnn, cnn = context.heads["classifier_cnn"], random.heads["classifier_cnn"]
    conv = cnn.conv_head  # He init on fan-out, zero bias: how EfficientNet initialises it
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert conv.bias is None or not conv.bias.any()
    assert float(random.heads["classifier_vit"].classifier.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert not torch.equal(trained_cnn.conv_head.weight, conv.weight)  # the trained head is untouched
    # the signal survives the random stack: logits differ between images about as much as the trained
    # head's do (PyTorch's generic reset_parameters left ~1e-3, which let GradCAM++'s epsilon shape the map)
    rng = np.random.default_rng(3)
    x = preprocess([__import__("PIL.Image").Image.fromarray(im) for im in
                    (defect_image, texture(rng), add_defect(texture(rng), rng, "scratch")[0], texture(rng))])
    with torch.no_grad():
        features = context.trunk(x, upto=4)[4]
        spread_trained = trained_cnn(features).std(0).max()
        spread_random = cnn(features).std(0).max()
    assert spread_random > 0.05 * spread_trained


@pytest.mark.parametrize("baseline", ["black", "blur", "noise"])
def test_integrated_gradients_completeness_on_a_smooth_model(baseline):
    """Attributions sum to F(x) - F(baseline): within 1 % of the gap at 32 steps on a smooth model."""
    torch.manual_seed(0)
    ctx = ExplainContext(PlantedTrunk(), {"classifier_cnn": SmoothHead()})
    x = preprocess([__import__("PIL.Image").Image.fromarray(texture(np.random.default_rng(3), 224))])
    exp = create_explainer("integrated_gradients", ctx, steps=32, baseline=baseline).explain(x, target=1)
    from xai.explainers.integrated_gradients import baseline_for

    model = ctx.classifier("classifier_cnn")
    with torch.no_grad():
        gap = float(model(x)[0, 1] - model(baseline_for(x, baseline))[0, 1])
    assert abs(gap) > 1e-3
    assert float(exp.attribution.sum()) == pytest.approx(gap, rel=0.01)


@pytest.mark.slow
def test_integrated_gradients_completeness_on_the_trained_cnn(inspector, defect_image):
    """ReLU6 networks need many steps: the stated tolerance is 10 % of the gap at 256 steps, and the error
    reported in `convergence_delta` shrinks from 16 to 256 steps."""
    x = inspector.preprocess(__import__("PIL.Image").Image.fromarray(defect_image))
    model = inspector.explain_context().classifier("classifier_cnn")
    with torch.no_grad():
        gap = float(model(x)[0, 1] - model(torch.full_like(x, -1.0))[0, 1])
    errors = {}
    for steps in (16, 256):
        exp = create_explainer("integrated_gradients", inspector.explain_context(), steps=steps, baseline="black",
                               batch=64).explain(x)
        errors[steps] = abs(float(exp.attribution.sum()) - gap)
        assert abs(exp.extras["convergence_delta"]) == pytest.approx(errors[steps], rel=1e-2, abs=1e-4)
    assert errors[256] <= 0.1 * abs(gap)
    assert errors[256] < errors[16]


def test_gradcam_pp_matches_pytorch_grad_cam(inspector, defect_image):
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = inspector.preprocess(__import__("PIL.Image").Image.fromarray(defect_image))
    ours = create_explainer("gradcam_pp", inspector.explain_context()).explain(x).heatmap
    model = inspector.explain_context().classifier("classifier_cnn")
    with GradCAMPlusPlus(model=model, target_layers=[model.head.target_layer]) as reference:
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(1)])[0]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99


def test_cam_is_the_closed_form_its_mean_plus_the_bias_is_the_logit(inspector, defect_image):
    """CAM at the head's own 7 x 7 grid is W_class . A_ij; averaged over the grid plus the class's bias it is the
    class logit exactly (the head pools by the mean, then one linear layer)."""
    from PIL import Image

    x = inspector.preprocess(Image.fromarray(defect_image))
    explainer = create_explainer("cam", inspector.explain_context())
    model = inspector.explain_context().classifier("classifier_cnn")
    with torch.no_grad():
        logits = model(x)[0]
        activations = model.head.activations(model.trunk(x, upto=4)[4])[0]
    for target in (0, 1):
        grid = explainer.compute(x, torch.tensor([target]))["heatmap"][0]
        weights = model.head.classifier.weight[target]
        closed = (weights[:, None, None] * activations).sum(0)
        torch.testing.assert_close(grid, closed, atol=1e-5, rtol=1e-5)
        logit = float(grid.mean() + model.head.classifier.bias[target].detach())
        assert logit == pytest.approx(float(logits[target]), abs=1e-4)


def test_score_cam_matches_pytorch_grad_cam(inspector, defect_image):
    """Every channel scored (channels=0), as the reference does, at 112 px to keep the test short."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = preprocess([__import__("PIL.Image").Image.fromarray(defect_image)], 112)
    ours = create_explainer("score_cam", inspector.explain_context(), channels=0).explain(x).heatmap
    model = inspector.explain_context().classifier("classifier_cnn")
    with ScoreCAM(model=model, target_layers=[model.head.target_layer]) as reference:
        reference.batch_size = 64
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(1)])[0]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99


def test_rollout_equals_the_hand_computed_product():
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(3):
        a = rng.random((2, 4, 5, 5))  # batch 2, 4 heads, 1 + 2x2 tokens
        layers.append(torch.tensor(a / a.sum(-1, keepdims=True), dtype=torch.float64))
    expected = []
    for b in range(2):
        result = np.eye(5)
        for attn in layers:
            fused = attn[b].numpy().mean(0) + np.eye(5)
            fused /= fused.sum(-1, keepdims=True)
            result = fused @ result
        expected.append(result)
    np.testing.assert_allclose(rollout(layers, "mean").numpy(), np.stack(expected), rtol=1e-12)
    # max fusion and discarding: rows still sum to 1, and discarded weakest entries change the result
    r = rollout(layers, "max", discard_ratio=0.5)
    np.testing.assert_allclose(r.sum(-1).numpy(), 1.0, rtol=1e-12)
    assert not torch.allclose(r, rollout(layers, "max"))


def test_rollout_works_for_other_token_grids():
    from xai.heads import HeadConfig, ViTHead

    head = ViTHead(HeadConfig("vit", 2, grid=9, depth=2)).eval()
    ctx = ExplainContext(PlantedTrunk(grid=9, channels=112), {"classifier_vit": head})
    exp = create_explainer("attention_rollout", ctx).explain(torch.zeros(1, 3, 224, 224))
    assert exp.heatmap.shape == (224, 224)


# ---- planted feature: a model that only looks at one region ---------------------------------------
REGION = (slice(2, 6), slice(8, 12))  # rows 2-5, columns 8-11 of the 14 x 14 stride-16 grid


class PlantedTrunk(nn.Module):
    """Stand-in trunk: stage 4 is a fixed random 16x16-patch embedding of the image (stride 16)."""

    def __init__(self, grid: int = 14, channels: int = 112):
        super().__init__()
        self.embed = nn.Conv2d(3, channels, kernel_size=16, stride=16)
        self.grid = grid
        self.requires_grad_(False)

    def forward(self, x, upto=4):
        f = self.embed(x)
        if f.shape[-1] != self.grid:
            f = nn.functional.adaptive_avg_pool2d(f, self.grid)
        return [None] * 4 + [f]


class PlantedHead(nn.Module):
    """Sees only REGION of the feature map: the output cannot depend on anything else."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(112, 16, 1, bias=False)  # no bias: zero activations outside REGION
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 2)
        mask = torch.zeros(1, 1, 14, 14)
        mask[..., REGION[0], REGION[1]] = 1
        self.register_buffer("mask", mask)

    @property
    def target_layer(self):
        return self.act

    @property
    def classifier(self):
        return self.fc

    def activations(self, f):
        return self.act(self.conv(f * self.mask))

    def forward(self, f):
        return self.fc(self.activations(f).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", [*GRADIENT_METHODS, "cam", "score_cam", "occlusion", "shap"])
def test_planted_feature_every_faithful_method_points_at_the_region(method):
    torch.manual_seed(0)
    ctx = ExplainContext(PlantedTrunk(), {"classifier_cnn": PlantedHead()})
    x = preprocess([__import__("PIL.Image").Image.fromarray(texture(np.random.default_rng(2), 224))])
    params = {"occlusion": {"window": 16, "stride": 16}, "shap": {"evaluations": 200, "plot": False}}.get(method, {})
    heat = create_explainer(method, ctx, **params).explain(x, target=1).heatmap
    if METHODS[method].signed:
        heat = np.abs(heat)
    inside = np.zeros((224, 224), bool)
    inside[32:96, 128:192] = True
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert inside[peak], f"{method} peaks at {peak}"
    # nearly all evidence inside the region, allowing for each method's resolution: CAMs are bilinear
    # upsamplings of the 14 x 14 grid (half a cell of bleed), SHAP's coarsest partition cells are larger
    margin = {"gradcam": 8, "gradcam_pp": 8, "cam": 8, "score_cam": 8, "shap": 32}.get(method, 0)
    near = np.zeros((224, 224), bool)
    near[32 - margin:96 + margin, 128 - margin:192 + margin] = True
    assert heat[near].sum() / heat.sum() > 0.9


@pytest.mark.parametrize(("side", "window", "stride"), [(224, 32, 16), (320, 46, 23)])
def test_occlusion_window_scales_with_the_input_size(side, window, stride):
    """The same 13 x 13 grid of windows at any input size; explicit parameters win."""
    ctx = ExplainContext(PlantedTrunk(grid=side // 16), {"classifier_cnn": PlantedHead()}, input_size=side)
    assert create_explainer("occlusion", ctx).params == {"window": window, "stride": stride, "batch": 8}
    assert create_explainer("occlusion", ctx, window=16).params["stride"] == 8
    assert create_explainer("occlusion", ctx, window=16, stride=16).params["stride"] == 16


def test_each_method_says_when_it_applies():
    """A method is offered where its component and everything it `needs` are there: the heads' methods with a head,
    the detector's with a detector, the retrieval trace only with thumbnails and shap_features with a score model."""
    def offered(context: ExplainContext) -> set[str]:
        return {name for name, cls in METHODS.items() if cls.applies_to(context)}

    cnn_only = ExplainContext(PlantedTrunk(), {"classifier_cnn": PlantedHead()})
    assert offered(cnn_only) == {name for name, cls in METHODS.items() if cls.component == "classifier_cnn"}
    assert "gradcam" in offered(cnn_only) and "attention_rollout" not in offered(cnn_only)
    detector = replace(cnn_only, patchcore=object())
    assert "anomaly_map" in offered(detector) and not {"retrieval", "shap_features"} & offered(detector)
    assert offered(replace(detector, retrieval=object(), score_model=object())) == set(METHODS) - {"attention_rollout"}
