"""Pictures for people: heatmap overlays with a defect contour, at the picture's own size (the app, the batch
report and the command lines draw the same ones)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

# pyplot keeps one process-wide "current figure", and shap's plots draw on it: two requests drawing at once would
# draw into each other's charts, so pyplot is used by one drawing at a time (the lock guards pyplot's own state)
_PYPLOT = threading.Lock()


def pyplot_png(draw: Callable[[], None], dpi: int = 80) -> bytes:
    """PNG bytes of what `draw` puts on a fresh pyplot figure (shap's plots draw only there)."""
    import matplotlib.pyplot as plt

    with _PYPLOT:
        plt.figure()
        try:
            draw()
            buf = io.BytesIO()
            plt.gcf().savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        finally:
            plt.close("all")
    return buf.getvalue()


def colourise(heatmap: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """float [H, W] -> uint8 RGB [H, W, 3] with matplotlib's perceptually uniform 'inferno' map."""
    from matplotlib import colormaps

    lo = float(np.min(heatmap)) if lo is None else lo
    hi = float(np.max(heatmap)) if hi is None else hi
    scaled = np.clip((heatmap - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heatmap)
    return (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, contour_at: float | None = None, alpha: float = 0.5,
            lo: float | None = None, hi: float | None = None) -> Image.Image:
    """Blend the coloured heatmap over `image` (resized to it), with a cyan outline where heatmap > contour_at."""
    size = image.size
    heat = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    heat_arr = np.asarray(heat)
    blended = Image.blend(image.convert("RGB"), Image.fromarray(colourise(heat_arr, lo, hi)), alpha)
    if contour_at is not None:
        region = Image.fromarray(((heat_arr > contour_at) * 255).astype(np.uint8))
        width = max(1, round(min(size) / 150))
        edge = np.asarray(region.filter(ImageFilter.MaxFilter(2 * width + 1))) ^ np.asarray(region)
        out = np.asarray(blended).copy()
        out[edge > 0] = (0, 255, 255)
        blended = Image.fromarray(out)
    return blended



def verdict_overlay(picture: Image.Image, anomaly_map: np.ndarray, threshold: float, score: float) -> Image.Image:
    """The anomaly map over the picture as the app shows a verdict: one colour scale from 0 to 1.5 x the threshold
    (or the score, if higher), and the contour where the map passes the threshold."""
    return overlay(picture, anomaly_map, contour_at=threshold, lo=0.0, hi=max(threshold * 1.5, float(score)))
