"""A loaded bundle turned into `detect()`: what the app and the command lines call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from xai.backbone import Trunk, checkpoint_path, create_trunk, file_sha256, preprocess
from xai.bundle import Bundle, BundleError, load, load_patchcore
from xai.io import ImageSource, load_image


@dataclass
class Detection:
    """Verdict for one image, with the anomaly map at model resolution and where the time went."""

    is_defect: bool
    score: float
    threshold: float
    scores: dict[str, float]
    anomaly_map: np.ndarray  # float32 [input_size, input_size]
    image_size: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "defect" if self.is_defect else "good"

    def to_json(self) -> dict:
        return {
            "label": self.label, "is_defect": self.is_defect, "score": round(self.score, 6),
            "threshold": round(self.threshold, 6), "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "image_size": list(self.image_size), "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


class Inspector:
    """Runs the bundle's models on one image: one trunk forward shared by every component."""

    def __init__(self, bundle: Bundle, trunk: Trunk | None = None):
        self.bundle = bundle
        self.patchcore = load_patchcore(bundle)
        trunk_meta = bundle.meta.get("trunk", {})
        name = trunk_meta.get("name", "efficientnet_lite0")
        expected = trunk_meta.get("weights_sha256")
        if expected and file_sha256(checkpoint_path(name)) != expected:
            raise BundleError(
                f"Bundle {bundle.source} was fitted on different {name} weights than the installed ones; "
                "install the package version recorded in its bundle.json or refit the bundle."
            )
        self.trunk = trunk or create_trunk(name)
        prep = bundle.meta.get("preprocessing", {})
        self.input_size = int(prep.get("input_size", self.patchcore.config.input_size))
        self.mean, self.std = prep.get("mean", (0.5, 0.5, 0.5)), prep.get("std", (0.5, 0.5, 0.5))
        self.threshold = float(bundle.meta["components"]["patchcore"]["threshold"])

    @classmethod
    def from_source(cls, source: str, trunk: Trunk | None = None) -> Inspector:
        return cls(load(source), trunk)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess([image], self.input_size, self.mean, self.std)

    @torch.no_grad()
    def detect(self, source: ImageSource) -> Detection:
        """Decode `source`, run trunk + PatchCore, and compare the image score with the stored threshold."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = (now - clock) * 1000.0
            clock = now

        start = clock
        image = load_image(source)
        lap("decode")
        x = self.preprocess(image)
        lap("preprocess")
        stages = self.trunk(x, upto=max(self.patchcore.config.layers))
        lap("trunk")
        embedding = self.patchcore.embed(stages)
        lap("features")
        patch_scores = self.patchcore.patch_scores(embedding)
        lap("knn")
        amap = self.patchcore.anomaly_map(patch_scores)
        score = float(self.patchcore.image_score(amap)[0])
        lap("map")
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return Detection(score > self.threshold, score, self.threshold, {"patchcore": score},
                         amap[0].numpy().astype(np.float32), image.size, timings)
