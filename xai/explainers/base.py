"""The shared explanation machinery: the result type, the model context and the Explainer base class.

Every method has the same call, `explainer.attribute(inputs, target=...)` (Captum's), and fills in one
step, `compute()` (pytorch-grad-cam's BaseCAM idea); the base class picks the target, times the call,
brings maps to input resolution and packs the result.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai.heads import HEAD_INPUT_STAGE


@dataclass
class Explanation:
    """One method's answer for one image."""

    method: str
    target: int | None  # class index explained (None for PatchCore methods)
    target_label: str | None
    heatmap: np.ndarray  # float32 [H, W] at input resolution: evidence for the target (may be signed)
    attribution: np.ndarray | None = None  # signed raw attribution where the method has one ([3, H, W] or [H, W])
    parameters: dict = field(default_factory=dict)
    ms: float = 0.0
    extras: dict = field(default_factory=dict)  # method-specific: neighbours, SHAP plot, convergence delta ...

    def to_json(self) -> dict:
        return {"method": self.method, "target": self.target, "target_label": self.target_label,
                "parameters": self.parameters, "ms": round(self.ms, 2),
                "heatmap_max": float(np.max(self.heatmap)), "heatmap_min": float(np.min(self.heatmap)),
                **{k: v for k, v in self.extras.items() if isinstance(v, (int, float, str, list, dict))}}


class Classifier(nn.Module):
    """Normalised image -> class logits through the frozen trunk and one head: what gradients flow through."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x, upto=HEAD_INPUT_STAGE)[HEAD_INPUT_STAGE])


@dataclass
class ExplainContext:
    """Everything a method may need: the trunk, the bundle's heads and detector, labels and preprocessing."""

    trunk: nn.Module
    heads: dict[str, nn.Module]
    patchcore: Any = None
    labels: list[str] = field(default_factory=lambda: ["good", "defect"])
    normal_index: int | None = 0
    input_size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    retrieval: Any = None  # xai.explainers.retrieval.RetrievalIndex when the bundle has thumbnails
    score_model: Any = None  # xai.score_model.ScoreModel when the detector's fit made one

    def classifier(self, component: str, private: bool = False) -> Classifier:
        """Trunk + head; `private` gives the call its own copy of the head, for methods that hook its modules:
        a hook on the shared head would also fire for (and record) a concurrent request's forward pass."""
        if component not in self.heads:
            raise ValueError(f"this bundle has no {component}; explain with another method or train it")
        head = copy.deepcopy(self.heads[component]) if private else self.heads[component]
        return Classifier(self.trunk, head).eval()

    def randomised(self, seed: int = 0) -> ExplainContext:
        """The same context with every head re-initialised by its architecture's own initialiser and PatchCore's
        bank and image features replaced by noise of the same per-dimension mean and spread: the
        model-randomisation check (Adebayo et al. 2018). PyTorch's generic reset_parameters is not used: its
        init shrinks the signal through the head's deep stack, and then GradCAM++'s epsilon, not the weights,
        shapes the map."""
        heads = {}
        with torch.random.fork_rng(devices=[]):  # seeded, and the process's generator is left as it was
            torch.manual_seed(seed)
            for name, head in self.heads.items():
                clone = copy.deepcopy(head)
                clone.reinitialise()
                heads[name] = clone.eval()
        patchcore = self.patchcore
        if patchcore is not None:
            patchcore = copy.deepcopy(patchcore)
            bank = patchcore.memory_bank
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(bank.shape, generator=generator) * bank.std(0) + bank.mean(0)
            patchcore.memory_bank = noise.float()
            patchcore.index = None
            feats = patchcore.image_features
            if len(feats):
                patchcore.image_features = (torch.randn(feats.shape, generator=generator) * feats.std(0)
                                            + feats.mean(0)).float()
        return replace(self, heads=heads, patchcore=patchcore)


class Explainer:
    """Base class: subclasses set `name`, their facts (`component`, `needs`, `caption`, `slow`, `report_card`,
    `defaults`) and implement `compute`. Everything else (the page, /info, the caps, the report card, which
    bundles offer it) reads the facts."""

    name: ClassVar[str]
    component: ClassVar[str] = "classifier_cnn"  # the model the method explains
    needs: ClassVar[tuple[str, ...]] = ()  # ExplainContext fields it needs beside its component ("retrieval", ...)
    defaults: ClassVar[dict] = {}
    signed: ClassVar[bool] = False  # whether the heatmap can be negative
    caption: ClassVar[str] = ""  # what the method answers, in one line (the page and /info show it)
    slow: ClassVar[bool] = False  # seconds of model runs: the page warns, the door and the caps count it
    report_card: ClassVar[bool] = False  # measured on every category's report card (the fast methods)
    hooks: ClassVar[bool] = False  # whether the method hooks the head's modules (it then gets its own copy)
    surrogate: ClassVar[bool] = False  # explains a small model of the score: the card shows its fidelity instead

    def __init__(self, context: ExplainContext, **params: Any):
        unknown = set(params) - set(self.defaults) - {"component"}
        if unknown:
            raise ValueError(f"{self.name} has no parameter(s) {sorted(unknown)}; it takes {sorted(self.defaults)}")
        self.context = context
        self.component_name = params.pop("component", self.component)
        self.params = {**self.defaults, **params}

    @classmethod
    def applies_to(cls, context: ExplainContext) -> bool:
        """Whether a bundle (its `context`) can run the method: its component is there, and all it `needs`."""
        present = context.patchcore is not None if cls.component == "patchcore" else cls.component in context.heads
        return present and all(getattr(context, need) is not None for need in cls.needs)

    # -- the one step a method fills in ---------------------------------------------------------
    def compute(self, inputs: torch.Tensor, target: torch.Tensor) -> dict:
        """Return {"heatmap": [B, h, w] tensor, optional "attribution": tensor, optional "extras": list[dict]}."""
        raise NotImplementedError

    # -- shared work ----------------------------------------------------------------------------
    @property
    def model(self) -> Classifier:
        return self.context.classifier(self.component_name, private=self.hooks)

    def default_target(self, inputs: torch.Tensor) -> torch.Tensor:
        """The defect class for binary data, otherwise the predicted class."""
        ctx = self.context
        if self.component_name == "patchcore":
            return torch.full((len(inputs),), -1)
        if len(ctx.labels) == 2 and ctx.normal_index is not None:
            return torch.full((len(inputs),), 1 - ctx.normal_index)
        with torch.no_grad():
            return self.model(inputs).argmax(-1)

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None) -> list[Explanation]:
        """Explain a normalised batch [B, 3, H, W]; one Explanation per image."""
        if target is None:
            target_t = self.default_target(inputs)
        else:
            target_t = torch.as_tensor(target).long().reshape(-1).expand(len(inputs)).clone()
        start = time.perf_counter()
        out = self.compute(inputs, target_t)
        elapsed = (time.perf_counter() - start) * 1000.0 / len(inputs)
        heat = _to_input_size(out["heatmap"], inputs.shape[-2:])
        attribution = out.get("attribution")
        extras = out.get("extras") or [{} for _ in range(len(inputs))]
        results = []
        for i in range(len(inputs)):
            t = int(target_t[i])
            results.append(Explanation(
                self.name, None if t < 0 else t, None if t < 0 else self.context.labels[t],
                heat[i].numpy().astype(np.float32),
                None if attribution is None else attribution[i].detach().numpy().astype(np.float32),
                {**self.params, "component": self.component_name}, elapsed, extras[i]))
        return results

    def explain(self, inputs: torch.Tensor, target: int | None = None) -> Explanation:
        """Single-image convenience: `attribute` on a batch of one."""
        return self.attribute(inputs[:1], target)[0]


def _to_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    maps = maps.detach().float()
    if maps.shape[-2:] != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    return maps
