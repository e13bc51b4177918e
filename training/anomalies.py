"""Synthetic anomalies for one-class data: cut-paste, scars, Perlin-noise texture patches, colour blotches.

Each generator takes a good uint8 image [H, W, 3] and a numpy Generator and returns the altered image and
the boolean mask of the pixels it changed, so a classifier trained on them learns "something local is off"
and the mask can be checked against the pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with `cells` lattice cells along each axis."""
    h, w = shape
    cy, cx = cells
    angles = rng.uniform(0, 2 * np.pi, (cy + 1, cx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.linspace(0, cy, h, endpoint=False), np.linspace(0, cx, w, endpoint=False)
    yi, xi = ys.astype(int), xs.astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * np.sqrt(2)


def _region(shape: tuple[int, int], rng: np.random.Generator, min_frac: float = 0.002,
            max_frac: float = 0.08) -> np.ndarray:
    """A random blob mask: thresholded Perlin noise restricted to a random ellipse, of bounded area."""
    h, w = shape
    for _ in range(20):
        scale = int(rng.choice([2, 4, 8]))
        noise = perlin_noise(shape, (scale, scale), rng)
        ellipse = np.zeros(shape, np.uint8)
        centre = (int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8)))
        axes = (int(rng.integers(w // 20, w // 5)), int(rng.integers(h // 20, h // 5)))
        cv2.ellipse(ellipse, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        mask = (noise > rng.uniform(-0.2, 0.3)) & (ellipse > 0)
        if min_frac * h * w <= mask.sum() <= max_frac * h * w:
            return mask
    return ellipse > 0


def cut_paste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste (Li et al. 2021): a rectangle of the image, colour-jittered and rotated, pasted elsewhere."""
    h, w = image.shape[:2]
    ph, pw = max(1, int(h * rng.uniform(0.08, 0.25))), max(1, int(w * rng.uniform(0.08, 0.25)))
    sy, sx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    patch = image[sy:sy + ph, sx:sx + pw].astype(np.float32)
    patch = np.clip(patch * rng.uniform(0.7, 1.3) + rng.uniform(-40, 40, 3), 0, 255)
    turns = int(rng.integers(0, 4))
    if pw >= h or ph >= w:  # a quarter turn would not fit a long thin picture (4:1 or more): half turns only
        turns = 2 * (turns % 2)
    patch = np.rot90(patch, turns)
    ph, pw = patch.shape[:2]
    ty, tx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    out = image.copy()
    out[ty:ty + ph, tx:tx + pw] = patch.astype(np.uint8)
    return out, _changed(image, out)


def scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar: a thin, long, rotated stroke in a colour far from the local mean."""
    h, w = image.shape[:2]
    out = image.copy()
    cx, cy = int(rng.integers(w // 6, w - w // 6)), int(rng.integers(h // 6, h - h // 6))
    length, angle = rng.uniform(0.1, 0.35) * w, rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    local = image[max(cy - 8, 0):cy + 8, max(cx - 8, 0):cx + 8].reshape(-1, 3).mean(0)
    colour = np.where(local > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3))
    cv2.line(out, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), tuple(float(c) for c in colour),
             int(rng.integers(2, max(3, w // 40))), lineType=cv2.LINE_AA)
    return out, _changed(image, out)


def perlin_texture(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style: a Perlin-shaped region blended with a foreign texture (noise or a shuffled copy)."""
    h, w = image.shape[:2]
    mask = _region((h, w), rng)
    if rng.random() < 0.5:
        texture = (perlin_noise((h, w), (16, 16), rng)[..., None] * rng.uniform(40, 120, 3) + rng.uniform(40, 215, 3))
    else:
        texture = np.roll(image[::-1, ::-1], (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
        texture = texture.astype(np.float32) * rng.uniform(0.6, 1.4)
    beta = rng.uniform(0.5, 1.0)
    blended = image.astype(np.float32)
    blended[mask] = (1 - beta) * blended[mask] + beta * np.clip(texture[mask], 0, 255)
    out = np.clip(blended, 0, 255).astype(np.uint8)
    return out, _changed(image, out)


def blotch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stain: a smooth region whose colour and brightness shift, strongest at its centre."""
    h, w = image.shape[:2]
    region = _region((h, w), rng).astype(np.float32)
    weight = cv2.GaussianBlur(region, (0, 0), max(1.0, w / 100))[..., None] * region[..., None]
    shift = rng.uniform(-90, 90, 3) * rng.choice([-1, 1])
    out = np.clip(image.astype(np.float32) + weight * shift, 0, 255).astype(np.uint8)
    return out, _changed(image, out)


def _shifted(image: np.ndarray, weight: np.ndarray, amount: float) -> tuple[np.ndarray, np.ndarray]:
    """`image` with `amount` grey levels added where `weight` [H, W] is (0..1), and the mask of changed pixels."""
    out = np.clip(image.astype(np.float32) + amount * weight[..., None], 0, 255).astype(np.uint8)
    return out, _changed(image, out)


def _strength(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A signed change in grey levels, log-uniform between `lo` and `hi`: faint and plain defects alike."""
    return float(rng.choice([-1, 1]) * np.exp(rng.uniform(np.log(lo), np.log(hi))))


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A crack: a one-pixel line (at the picture's own resolution), 15-35 % of its shorter side long, 10-80 grey
    levels darker or brighter than the surface it crosses."""
    h, w = image.shape[:2]
    length, angle = rng.uniform(0.15, 0.35) * min(h, w), rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    line = np.zeros((h, w), np.uint8)
    cv2.line(line, (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy)), 1, 1, lineType=cv2.LINE_8)
    return _shifted(image, line.astype(np.float32), _strength(rng, 10, 80))


def spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small spot (a blowhole, a speck): a disc 1-3 % of the shorter side across (at least a pixel), 15-90 grey
    levels darker or brighter."""
    h, w = image.shape[:2]
    disc = np.zeros((h, w), np.uint8)
    radius = max(1, round(rng.uniform(0.005, 0.015) * min(h, w)))
    centre = (round(rng.uniform(0.2, 0.8) * w), round(rng.uniform(0.2, 0.8) * h))
    cv2.circle(disc, centre, radius, 1, -1)
    return _shifted(image, disc.astype(np.float32), _strength(rng, 15, 90))


def faint_area(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An uneven surface: a large soft-edged area (10-20 % of the shorter side in radius, flat inside half of it)
    6-30 grey levels darker or brighter."""
    h, w = image.shape[:2]
    radius = rng.uniform(0.1, 0.2) * min(h, w)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    yy, xx = np.mgrid[0:h, 0:w]
    weight = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / radius, 0, 1).astype(np.float32)
    return _shifted(image, weight, _strength(rng, 6, 30))


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, amount: float = 0.1) -> np.ndarray:
    """A nuisance change, not an anomaly: brightness and contrast within `amount` (10 %)."""
    x = image.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(1 - amount, 1 + amount) + x.mean() * rng.uniform(1 - amount, 1 + amount)
    return np.clip(x, 0, 255).astype(np.uint8)


def nuisance_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The picture as if photographed again: shifted by up to 1/32 of its side, turned by up to 2 degrees
    (reflected at the border) and photometrically jittered. Stands in for an unseen good picture when only one
    was given."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-2, 2)), 1.0)
    matrix[:, 2] += rng.uniform(-1, 1, 2) * np.array([w, h]) / 32
    moved = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return photometric_jitter(moved, rng)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=-1)


GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "cut_paste": cut_paste, "scar": scar, "perlin": perlin_texture, "blotch": blotch,
}
# Subtle defects at the two ends of the size range and between, the evidence a fit chooses its view by
# (training.choice): GENERATORS' anomalies are plain enough that every view finds them.
SUBTLE = {"crack": crack, "spot": spot, "faint_area": faint_area}


def synthesize(image: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...] = tuple(GENERATORS),
               min_pixels: int = 16) -> tuple[np.ndarray, np.ndarray, str]:
    """A random kind of anomaly on `image`, retried until it visibly changes at least `min_pixels` pixels."""
    for _ in range(10):
        kind = kinds[int(rng.integers(len(kinds)))]
        out, mask = GENERATORS[kind](image, rng)
        if mask.sum() >= min_pixels:
            return out, mask, kind
    return out, mask, kind
