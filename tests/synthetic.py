"""Generated test images: a woven texture with a random shift, and the same with a drawn defect; a grained surface;
whole generated parts (good and defective pictures) in the mvtec layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256


def texture(rng: np.random.Generator, size: int = SIZE, width: int | None = None) -> np.ndarray:
    """A regular woven pattern (two gratings), randomly shifted, with mild noise: uint8 [size, width or size, 3]."""
    yy, xx = np.mgrid[0:size, 0:width or size].astype(np.float32)
    dx, dy = rng.uniform(0, 16, size=2)
    weave = 0.5 + 0.25 * np.sin((xx + dx) * 2 * np.pi / 16) + 0.25 * np.sin((yy + dy) * 2 * np.pi / 16)
    base = np.stack([0.35 + 0.4 * weave, 0.30 + 0.35 * weave, 0.20 + 0.3 * weave], axis=-1)
    base += rng.normal(0, 0.02, size=base.shape)
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def add_defect(image: np.ndarray, rng: np.random.Generator, kind: str = "scratch",
               centre: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scratch or blob at `centre` (x, y), by default somewhere away from the border; returns (image,
    boolean mask of changed pixels)."""
    size = min(image.shape[:2])
    canvas = Image.fromarray(image)
    mask = Image.new("L", canvas.size, 0)
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    cx, cy = centre if centre is not None else rng.integers(size // 4, 3 * size // 4, size=2)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = size // 4
        x0, y0 = cx - length * np.cos(angle) / 2, cy - length * np.sin(angle) / 2
        x1, y1 = cx + length * np.cos(angle) / 2, cy + length * np.sin(angle) / 2
        draw.line([(x0, y0), (x1, y1)], fill=(240, 240, 235), width=5)
        mdraw.line([(x0, y0), (x1, y1)], fill=255, width=5)
    else:
        r = size // 14
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 20, 60))
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return np.asarray(canvas), np.asarray(mask) > 0


def thin_line(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A crack one pixel wide at the picture's own resolution: a long, slightly bright diagonal line."""
    h, w = image.shape[:2]
    out, mask = image.copy(), np.zeros((h, w), dtype=bool)
    x0, y0 = rng.integers(w // 4, w // 2), rng.integers(h // 4, h // 2)
    for t in range(w // 3):
        y, x = y0 + t // 2, x0 + t
        out[y, x] = (205, 195, 170)
        mask[y, x] = True
    return out, mask


def faint_blotch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A large, faint, soft-edged stain: a quarter of the picture's side across, a few grey levels darker."""
    h, w = image.shape[:2]
    cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
    r = min(h, w) // 6
    yy, xx = np.mgrid[0:h, 0:w]
    weight = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1)  # flat inside r/2, fading out to 1.5 r
    out = np.clip(image.astype(np.float32) - 28 * weight[..., None], 0, 255).astype(np.uint8)
    return out, weight > 0.5


def grained(rng: np.random.Generator, size: int, grain: float) -> np.ndarray:
    """A flat surface under a fine random grain: noise blurred over about a pixel, flipping sign from pixel to pixel
    (a checkerboard of random strength, `grain` grey levels strong), so nearly all of its energy lies between the
    Nyquist limits of a 320 and a 224 px view: a 320 px picture brought to 224 loses it, one seen at 320 keeps it.
    uint8 [size, size, 3]."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)
    checker = np.where(np.add.outer(np.arange(size), np.arange(size)) % 2, 1.0, -1.0)
    surface = np.array([130.0, 120.0, 100.0]) + rng.uniform(-4, 4) + rng.normal(0, 2, (size, size, 1))
    surface += (grain * checker * noise / noise.std())[..., None]
    return np.clip(surface, 0, 255).astype(np.uint8)


def faint_line(image: np.ndarray, rng: np.random.Generator, amount: float = 12) -> tuple[np.ndarray, np.ndarray]:
    """A faint crack: a one-pixel line (at the picture's own resolution) a third of its side long, `amount` grey
    levels brighter than the surface it crosses."""
    import cv2

    h, w = image.shape[:2]
    x0, y0 = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
    mask = np.zeros((h, w), np.uint8)
    cv2.line(mask, (x0, y0), (x0 + w // 3, y0 + w // 6), 1, 1, lineType=cv2.LINE_8)
    out = np.clip(image.astype(np.float32) + amount * mask[..., None], 0, 255).astype(np.uint8)
    return out, mask > 0


def faint_area(image: np.ndarray, rng: np.random.Generator, amount: float = 12) -> tuple[np.ndarray, np.ndarray]:
    """A large faint stain: soft-edged, a third of the picture's side across where it is flat, fading out over as
    much again, `amount` grey levels darker (faint_blotch with a chosen strength)."""
    h, w = image.shape[:2]
    cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
    r = min(h, w) // 6
    yy, xx = np.mgrid[0:h, 0:w]
    weight = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1)
    out = np.clip(image.astype(np.float32) - amount * weight[..., None], 0, 255).astype(np.uint8)
    return out, weight > 0.5


def on_defect(amap: np.ndarray, mask: np.ndarray, tolerance: int = 8) -> bool:
    """The map's maximum lies inside the mask (resized to the map) dilated by the pointing-game tolerance."""
    from scipy.ndimage import binary_dilation

    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(amap.shape[::-1])) > 0
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return bool(binary_dilation(resized, iterations=tolerance)[peak])


def write_mvtec_folder(root: Path, n_train: int = 14, n_test_good: int = 4, n_test_defect: int = 4,
                       seed: int = 0, size: int = SIZE, width: int | None = None) -> Path:
    """An mvtec-layout folder of generated textures (size x width pictures): train/good, test/{good,scratch,blob},
    ground_truth masks."""
    rng = np.random.default_rng(seed)
    (root / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size, width)).save(root / "train" / "good" / f"{i:03d}.png")
    (root / "test" / "good").mkdir(parents=True)
    for i in range(n_test_good):
        Image.fromarray(texture(rng, size, width)).save(root / "test" / "good" / f"{i:03d}.png")
    for kind in ("scratch", "blob"):
        (root / "test" / kind).mkdir(parents=True)
        (root / "ground_truth" / kind).mkdir(parents=True)
        for i in range(n_test_defect // 2):
            image, mask = add_defect(texture(rng, size, width), rng, kind)
            Image.fromarray(image).save(root / "test" / kind / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def write_part(root: Path, picture: Callable[[np.random.Generator], np.ndarray],
               defect: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]], kind: str,
               n_train: int = 12, n_test_good: int = 6, n_test_defect: int = 6, seed: int = 0) -> Path:
    """An mvtec-layout folder of one generated part: `picture(rng)` makes a good picture, `defect(picture, rng)` a
    defective one and its mask (test/`kind`, ground_truth/`kind`)."""
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in ("train/good", "test/good", f"test/{kind}", f"ground_truth/{kind}")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(picture(rng)).save(folders["train/good"] / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(picture(rng)).save(folders["test/good"] / f"{i:03d}.png")
    for i in range(n_test_defect):
        image, mask = defect(picture(rng), rng)
        Image.fromarray(image).save(folders[f"test/{kind}"] / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folders[f"ground_truth/{kind}"] / f"{i:03d}_mask.png")
    return root


def write_imagefolder(root: Path, per_class: int = 24, classes: tuple[str, ...] = ("good", "scratch", "blob"),
                      seed: int = 0) -> Path:
    """An imagefolder-layout dataset of generated textures: `good` plus one folder per defect kind."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            image = texture(rng)
            if cls != "good":
                image = add_defect(image, rng, cls)[0]
            Image.fromarray(image).save(root / cls / f"{i:03d}.png")
    return root
