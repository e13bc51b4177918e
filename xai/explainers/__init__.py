"""The explainer suite: one module per method, one registry line each (pytorch-grad-cam's layout)."""

from __future__ import annotations

from xai.explainers.anomaly_map import AnomalyMap
from xai.explainers.attention_rollout import AttentionRollout
from xai.explainers.base import Classifier, ExplainContext, Explainer, Explanation
from xai.explainers.cam import CAM
from xai.explainers.gradcam import GradCAM
from xai.explainers.gradcam_pp import GradCAMPlusPlus
from xai.explainers.integrated_gradients import IntegratedGradients
from xai.explainers.occlusion import Occlusion
from xai.explainers.retrieval import Retrieval
from xai.explainers.saliency import Saliency
from xai.explainers.score_cam import ScoreCAM
from xai.explainers.shap_features import SHAPFeatures
from xai.explainers.shap_values import SHAP
from xai.explainers.smoothgrad import SmoothGrad

METHODS: dict[str, type[Explainer]] = {cls.name: cls for cls in (
    AnomalyMap,
    Retrieval,
    GradCAM,
    GradCAMPlusPlus,
    CAM,
    Saliency,
    SmoothGrad,
    IntegratedGradients,
    AttentionRollout,
    Occlusion,
    ScoreCAM,
    SHAP,
    SHAPFeatures,
)}


def slow_methods() -> list[str]:
    """The registered methods that take seconds (many model runs)."""
    return [name for name, cls in METHODS.items() if cls.slow]


def report_card_methods() -> list[str]:
    """The registered methods every report card measures."""
    return [name for name, cls in METHODS.items() if cls.report_card]


def captions() -> dict[str, str]:
    """Every registered method's one-line caption."""
    return {name: cls.caption for name, cls in METHODS.items()}


def create_explainer(name: str, context: ExplainContext, **params) -> Explainer:
    """Registry look-up: the explainer called `name` over `context`."""
    if name not in METHODS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](context, **params)


__all__ = ["METHODS", "Classifier", "ExplainContext", "Explainer", "Explanation",
           "captions", "create_explainer", "report_card_methods", "slow_methods"]
