"""Why the score is this number: readable properties of a picture and its anomaly map, and a small tree model that
predicts the detector's score from them, which the `shap_features` method explains with shap's exact tree explainer.

The score is the map's maximum, so the maximum itself is not a property (it would explain the score by restating
it); the properties say what about the picture and its map goes with a high maximum. The model is stored as plain
arrays (safetensors) and handed to shap in its documented dict-of-trees form: nothing is unpickled. It is fitted by
`training.score_model` on the detector's calibration pictures, with its fidelity measured on pictures it was not
fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

# name -> what it measures, with its unit: the chart's labels and /explain's JSON keys
PROPERTIES: dict[str, str] = {
    "area_above_threshold": "area above the threshold (% of the picture)",
    "anomalous_regions": "separate regions above the threshold",
    "map_mean": "the map's average (% of the threshold)",
    "peak_border_distance": "peak's distance from the border (% of the short side)",
    "brightness_offset": "brightness away from good pictures' typical (their spreads)",
    "colour_offset": "colour away from good pictures' typical (their spreads)",
    "edge_density": "pixels on a strong edge (%; good pictures ~10 %)",
    "low_frequency_share": "contrast in large smooth shapes (%)",
}
EDGE_QUANTILE = 0.9  # a "strong edge" is stronger than this share of the good pictures' pixels
LOW_FREQUENCY_CYCLES = 4.0  # "large smooth shapes": under this many cycles across the picture
FAITHFUL_R2 = 0.7  # below either, the chart says that the small model does not follow the score closely
FAITHFUL_AGREEMENT = 0.9


def _luminance(picture: np.ndarray) -> np.ndarray:
    rgb = np.asarray(picture, np.float32) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _gradient(luminance: np.ndarray) -> np.ndarray:
    """Step to the next pixel right and down (forward differences: central ones miss the finest stripes)."""
    gx = np.diff(luminance, axis=1, append=luminance[:, -1:])
    gy = np.diff(luminance, axis=0, append=luminance[-1:, :])
    return np.hypot(gx, gy)


def _chromaticity(picture: np.ndarray) -> np.ndarray:
    mean = np.asarray(picture, np.float64).reshape(-1, 3).mean(0) + 1e-6
    return mean[:2] / mean.sum()


def low_frequency_share(luminance: np.ndarray) -> float:
    """Share of the picture's contrast energy (its mean removed) below LOW_FREQUENCY_CYCLES cycles across it."""
    power = np.abs(np.fft.rfft2(luminance - luminance.mean())) ** 2
    fy = np.fft.fftfreq(luminance.shape[0]) * luminance.shape[0]
    fx = np.fft.rfftfreq(luminance.shape[1]) * luminance.shape[1]
    low = np.hypot(fy[:, None], fx[None, :]) < LOW_FREQUENCY_CYCLES
    total = power.sum()
    return float(power[low].sum() / total) if total > 0 else 0.0


@dataclass
class Reference:
    """The good pictures' typical values, which the offsets are measured from."""

    brightness: float
    brightness_spread: float
    chromaticity: tuple[float, float]
    chromaticity_spread: tuple[float, float]
    edge_level: float

    @classmethod
    def of(cls, pictures: list[np.ndarray]) -> Reference:
        """From good pictures (uint8 [H, W, 3] at the detector's view)."""
        lum = [_luminance(p) for p in pictures]
        bright = np.array([m.mean() for m in lum])
        chroma = np.array([_chromaticity(p) for p in pictures])
        grads = np.concatenate([_gradient(m).ravel()[::7] for m in lum])  # a sample of every picture's pixels
        return cls(float(bright.mean()), float(max(bright.std(), 1e-3)),
                   tuple(float(c) for c in chroma.mean(0)), tuple(float(max(s, 1e-4)) for s in chroma.std(0)),
                   float(np.quantile(grads, EDGE_QUANTILE)))


def properties(picture: np.ndarray, amap: np.ndarray, threshold: float, reference: Reference) -> np.ndarray:
    """PROPERTIES of one picture (uint8 [H, W, 3]) and its anomaly map ([H, W], score units), in that order."""
    from scipy import ndimage

    amap = np.asarray(amap, np.float64)
    above = amap > threshold
    _, regions = ndimage.label(above)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    border = min(peak[0], peak[1], amap.shape[0] - 1 - peak[0], amap.shape[1] - 1 - peak[1])
    lum = _luminance(picture)
    chroma = (_chromaticity(picture) - np.array(reference.chromaticity)) / np.array(reference.chromaticity_spread)
    return np.array([
        100.0 * above.mean(),
        regions,
        100.0 * amap.mean() / threshold,
        100.0 * border / min(amap.shape),
        (lum.mean() - reference.brightness) / reference.brightness_spread,
        float(np.hypot(*chroma)),
        100.0 * (_gradient(lum) > reference.edge_level).mean(),
        100.0 * low_frequency_share(lum),
    ], dtype=np.float32)


class ScoreModel:
    """A regression-tree ensemble (shap's dict form: one dict of node arrays per tree) predicting the score from
    PROPERTIES, with what it needs to read them (reference, threshold) and its measured fidelity."""

    WEIGHTS = "score_model.safetensors"
    ARRAYS = ("children_left", "children_right", "features", "thresholds", "values", "node_sample_weight")

    def __init__(self, trees: list[dict[str, np.ndarray]], base_offset: float, threshold: float,
                 reference: Reference, fidelity: dict):
        self.trees, self.base_offset, self.threshold = trees, float(base_offset), float(threshold)
        self.reference, self.fidelity = reference, fidelity
        self._explainer = None

    @property
    def faithful(self) -> bool:
        """Whether the model followed the score closely on pictures it was not fitted on."""
        return (self.fidelity.get("r2", 0.0) >= FAITHFUL_R2
                and self.fidelity.get("verdict_agreement", 0.0) >= FAITHFUL_AGREEMENT)

    def properties(self, picture: np.ndarray, amap: np.ndarray) -> np.ndarray:
        return properties(picture, amap, self.threshold, self.reference)

    def explainer(self):
        """shap's TreeExplainer over the trees (path-dependent: exact Shapley values of this model, no data)."""
        if self._explainer is None:
            import shap

            trees = [{**tree, "children_default": tree["children_left"].copy(),
                      "values": tree["values"].reshape(-1, 1)} for tree in self.trees]
            model = {"trees": trees, "base_offset": self.base_offset, "tree_output": "raw_value",
                     "objective": "squared_error", "input_dtype": np.float32, "internal_dtype": np.float64}
            self._explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        return self._explainer

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.explainer().model.predict(np.asarray(features, np.float32)), np.float64).reshape(-1)

    def explain(self, features: np.ndarray) -> tuple[float, np.ndarray]:
        """(base value, SHAP values [N, len(PROPERTIES)]): base + the row's sum is `predict` of the row."""
        explainer = self.explainer()
        values = explainer.shap_values(np.asarray(features, np.float32), check_additivity=True)
        return float(np.asarray(explainer.expected_value).ravel()[0]), np.asarray(values, np.float64)

    # -- storage: node arrays padded to one length, in safetensors; the rest is JSON -----------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        width = max(len(t["features"]) for t in self.trees)
        out = {"n_nodes": torch.tensor([len(t["features"]) for t in self.trees], dtype=torch.int64)}
        for key in self.ARRAYS:
            pad = -1 if key.startswith("children") or key == "features" else 0
            rows = [np.pad(np.asarray(t[key]), (0, width - len(t[key])), constant_values=pad) for t in self.trees]
            out[key] = torch.from_numpy(np.stack(rows))
        return out

    def to_meta(self) -> dict:
        return {"weights": self.WEIGHTS, "properties": list(PROPERTIES), "base_offset": self.base_offset,
                "threshold": self.threshold, "reference": asdict(self.reference), "fidelity": self.fidelity}

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], meta: dict) -> ScoreModel:
        if list(meta.get("properties", [])) != list(PROPERTIES):
            raise ValueError("the score model was fitted on other properties than this version reads; refit it")
        n_nodes = tensors["n_nodes"].tolist()
        trees = [{key: tensors[key][i, :n].numpy() for key in cls.ARRAYS} for i, n in enumerate(n_nodes)]
        for tree in trees:  # stored data: children come after their parent (no cycles), features are ours
            index = np.arange(len(tree["features"]))
            left, right, feature = tree["children_left"], tree["children_right"], tree["features"]
            leaf = (left == -1) & (right == -1)
            inner = ((left > index) & (right > index) & (left < len(index)) & (right < len(index))
                     & (feature >= 0) & (feature < len(PROPERTIES)))
            if not (leaf | inner).all():
                raise ValueError("the score model's trees are malformed; refit the detector")
        ref = meta["reference"]
        reference = Reference(float(ref["brightness"]), float(ref["brightness_spread"]),
                              tuple(ref["chromaticity"]), tuple(ref["chromaticity_spread"]), float(ref["edge_level"]))
        return cls(trees, meta["base_offset"], meta["threshold"], reference, dict(meta.get("fidelity", {})))
