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
# Below this R² on unseen pictures the chart says the small model follows the score only loosely. Agreement on the
# verdict is reported but decides nothing: "area above the threshold > 0" holds exactly when the score is above
# the threshold, so one split recovers the verdict whatever the rest of the model does.
FAITHFUL_R2 = 0.7
# A picture whose score the model misses by more than this many of its unseen-picture RMSEs lies outside what it
# learned (trees do not extrapolate: a real defect scoring above every synthetic anomaly is the common case); the
# chart then says so for that picture.
OUTSIDE_RMSE = 2.0


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
class Statistics:
    """What the picture-side properties are read from: one picture's brightness, colour, edges and spectrum."""

    brightness: float
    chromaticity: np.ndarray  # [2]: the mean colour's red and green shares
    gradient: np.ndarray  # [H, W]: step to the next pixel
    low_frequency: float

    @classmethod
    def of(cls, picture: np.ndarray) -> Statistics:
        lum = _luminance(picture)
        return cls(float(lum.mean()), _chromaticity(picture), _gradient(lum), low_frequency_share(lum))


@dataclass
class Reference:
    """The good pictures' typical values, which the offsets are measured from."""

    brightness: float
    brightness_spread: float
    chromaticity: tuple[float, float]
    chromaticity_spread: tuple[float, float]
    edge_level: float

    @classmethod
    def of(cls, good: list[Statistics]) -> Reference:
        """From good pictures' statistics."""
        bright = np.array([s.brightness for s in good])
        chroma = np.array([s.chromaticity for s in good])
        grads = np.concatenate([s.gradient.ravel()[::7] for s in good])  # a sample of every picture's pixels
        return cls(float(bright.mean()), float(max(bright.std(), 1e-3)),
                   tuple(float(c) for c in chroma.mean(0)), tuple(float(max(s, 1e-4)) for s in chroma.std(0)),
                   float(np.quantile(grads, EDGE_QUANTILE)))


def map_properties(amap: np.ndarray, threshold: float) -> list[float]:
    """The map's four PROPERTIES: area above the threshold, regions, average, the peak's border distance."""
    from scipy import ndimage

    amap = np.asarray(amap, np.float64)
    above = amap > threshold
    _, regions = ndimage.label(above)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    border = min(peak[0], peak[1], amap.shape[0] - 1 - peak[0], amap.shape[1] - 1 - peak[1])
    return [100.0 * above.mean(), float(regions), 100.0 * amap.mean() / threshold, 100.0 * border / min(amap.shape)]


def combine(stats: Statistics, of_map: list[float], reference: Reference) -> np.ndarray:
    """PROPERTIES in order, from a picture's statistics, its map's properties and the good pictures' reference."""
    chroma = (stats.chromaticity - np.array(reference.chromaticity)) / np.array(reference.chromaticity_spread)
    return np.array([
        *of_map,
        (stats.brightness - reference.brightness) / reference.brightness_spread,
        float(np.hypot(*chroma)),
        100.0 * (stats.gradient > reference.edge_level).mean(),
        100.0 * stats.low_frequency,
    ], dtype=np.float32)


def properties(picture: np.ndarray, amap: np.ndarray, threshold: float, reference: Reference) -> np.ndarray:
    """PROPERTIES of one picture (uint8 [H, W, 3]) and its anomaly map ([H, W], score units), in that order."""
    return combine(Statistics.of(picture), map_properties(amap, threshold), reference)


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
        return (self.fidelity.get("r2") or 0.0) >= FAITHFUL_R2

    def follows(self, output: float, score: float) -> bool:
        """Whether the model's `output` for a picture is as close to its true `score` as on unseen calibration
        pictures (within OUTSIDE_RMSE of their RMSE)."""
        rmse = self.fidelity.get("rmse")
        return rmse is not None and abs(output - score) <= OUTSIDE_RMSE * rmse

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
        """The model from its arrays and bundle.json entry, checked first: shap walks the trees in C without
        bounds checks, so a bundle (data from whoever published it) must not reach it with a tree that loops,
        shares nodes, reads past its arrays or is deep enough to exhaust the stack. Raises ValueError."""
        if list(meta.get("properties", [])) != list(PROPERTIES):
            raise ValueError("the score model was fitted on other properties than this version reads; refit it")
        shapes = {tuple(tensors[key].shape) for key in cls.ARRAYS if key in tensors}
        if set(cls.ARRAYS) - set(tensors) or "n_nodes" not in tensors or len(shapes) != 1 \
                or len(next(iter(shapes))) != 2:
            raise ValueError("the score model's arrays are missing or of different shapes")
        count, width = next(iter(shapes))
        whole = ("n_nodes", "children_left", "children_right", "features")
        if any(tensors[k].is_floating_point() for k in whole) or not 0 < count <= MAX_TREES \
                or not 0 < width <= MAX_NODES or tuple(tensors["n_nodes"].shape) != (count,):
            raise ValueError(f"the score model must hold 1-{MAX_TREES} trees of integer nodes, "
                             f"at most {MAX_NODES} each")
        trees = []
        for i, n in enumerate(tensors["n_nodes"].tolist()):
            if not 0 < n <= width:
                raise ValueError("the score model names more nodes than it stores")
            tree = {key: tensors[key][i, :n].numpy() for key in cls.ARRAYS}
            _check_tree(tree)
            trees.append({key: tree[key].astype(np.int32 if key in ("children_left", "children_right", "features")
                                                 else np.float64) for key in cls.ARRAYS})
        try:
            ref = meta["reference"]
            reference = Reference(float(ref["brightness"]), float(ref["brightness_spread"]),
                                  (float(ref["chromaticity"][0]), float(ref["chromaticity"][1])),
                                  (float(ref["chromaticity_spread"][0]), float(ref["chromaticity_spread"][1])),
                                  float(ref["edge_level"]))
            numbers = [float(meta["base_offset"]), float(meta["threshold"]), *asdict(reference).values()]
            fidelity = {k: None if v is None else int(v) if k == "n" else float(v)
                        for k, v in meta.get("fidelity", {}).items() if k in ("r2", "rmse", "verdict_agreement", "n")}
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"the score model's settings cannot be read ({exc})") from None
        flat = np.array([x for v in numbers for x in (v if isinstance(v, tuple) else (v,))])
        if not np.isfinite(flat).all() or min(float(meta["threshold"]), reference.brightness_spread,
                                               *reference.chromaticity_spread) <= 0:
            raise ValueError("the score model's settings are out of range")
        model = cls(trees, float(meta["base_offset"]), float(meta["threshold"]), reference,
                    {**fidelity, "data": str(meta.get("fidelity", {}).get("data", ""))[:200]})
        model.explainer()  # built now, so a tree shap refuses fails the load, not a request
        return model


MAX_TREES, MAX_NODES, MAX_DEPTH = 1000, 4096, 32


def _check_tree(tree: dict[str, np.ndarray]) -> None:
    """Every node reached from the root exactly once, within MAX_DEPTH; leaves are -1/-1; inner nodes split on a
    known property at a finite threshold; values finite and sample weights positive."""
    left, right, feature = tree["children_left"], tree["children_right"], tree["features"]
    n = len(left)
    if not (np.isfinite(tree["values"]).all() and np.isfinite(tree["node_sample_weight"]).all()
            and (tree["node_sample_weight"] > 0).all()):
        raise ValueError("the score model's trees are malformed (values or weights); refit the detector")
    seen = np.zeros(n, bool)
    level, depth = [0], 0
    while level:
        if depth > MAX_DEPTH:
            raise ValueError("the score model's trees are too deep; refit the detector")
        following = []
        for node in level:
            if seen[node]:
                raise ValueError("the score model's trees are malformed (a node reached twice); refit the detector")
            seen[node] = True
            a, b = int(left[node]), int(right[node])
            if a == -1 and b == -1:
                continue
            if not (0 < a < n and 0 < b < n and 0 <= feature[node] < len(PROPERTIES)
                    and np.isfinite(tree["thresholds"][node])):
                raise ValueError("the score model's trees are malformed (a split); refit the detector")
            following += [a, b]
        level, depth = following, depth + 1
    if not seen.all():
        raise ValueError("the score model's trees are malformed (unreachable nodes); refit the detector")
