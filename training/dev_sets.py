"""Derive non-square development sets from an mvtec-layout folder, so detector defaults meet other shapes.

    python -m training.dev_sets --data ../shared/data/mvtec_ad/bottle --out /tmp/devsets

    python -m training.dev_sets --data DIR --out /tmp/devsets --shrink 3,4 --kinds whole,strips

Writes mvtec-layout sets next to each other (never commit them: they are crops of licensed data):
- `<name>_strips`: tall strips (width 2/5 of the height) at a seeded random horizontal offset, so the
  picture's border cuts through ordinary product surface (like a long part photographed in sections);
- `<name>_crops`: crops of seeded random size (45-100 % of the shorter side) and aspect (0.4-1.0, either
  orientation), like a product whose pictures come in many shapes.
- `<name>_whole`: every picture as it is (with `--shrink`: the small-picture sets).
`--shrink N` first shrinks every picture (and mask) to 1/N of its sides and names the sets `<name>_1of<N>[_kind]`:
small pictures, like a part photographed from far or cut into tiles, whose own pixels are fewer than the
detector's view. Masks are cropped alike; a defective picture's crop always contains its whole defect when it fits, else
the defect's centre.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.cli import run
from training.data import DataError, load_dataset
from training.jobs import progress


def _window(rng: np.random.Generator, size: tuple[int, int], crop: tuple[int, int],
            keep: tuple[int, int, int, int] | None) -> tuple[int, int]:
    """Top-left corner of a `crop` (w, h) window inside `size` (w, h), containing box `keep` when it can."""
    (width, height), (cw, ch) = size, crop
    lo_x, hi_x, lo_y, hi_y = 0, width - cw, 0, height - ch
    if keep is not None:
        x0, y0, x1, y1 = keep
        if x1 - x0 > cw:  # the defect is wider than the window: keep its centre
            x0 = x1 = (x0 + x1) // 2
        if y1 - y0 > ch:
            y0 = y1 = (y0 + y1) // 2
        lo_x, hi_x = max(lo_x, x1 - cw), min(hi_x, x0)
        lo_y, hi_y = max(lo_y, y1 - ch), min(hi_y, y0)
    return int(rng.integers(lo_x, max(lo_x, hi_x) + 1)), int(rng.integers(lo_y, max(lo_y, hi_y) + 1))


def strip_shape(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    return (round(0.4 * height), height) if width >= 0.4 * height else (width, round(width / 0.4))


def crop_shape(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
    short = rng.uniform(0.45, 1.0) * min(size)
    aspect = rng.uniform(0.4, 1.0)
    long = min(short / aspect, max(size))
    return (round(long), round(short)) if rng.random() < 0.5 else (round(short), round(long))


def whole_shape(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
    return size


SHAPES = {"strips": strip_shape, "crops": crop_shape, "whole": whole_shape}


def set_name(source: str, kind: str, shrink: int = 1) -> str:
    """The derived set's folder name: `<name>_<kind>`, or `<name>_1of<N>[_<kind>]` for pictures shrunk N times."""
    if shrink == 1:
        return f"{source}_{kind}"
    return f"{source}_1of{shrink}" + ("" if kind == "whole" else f"_{kind}")


def shrunk(picture: Image.Image, shrink: int, mask: bool = False) -> Image.Image:
    """`picture` at 1/`shrink` of its sides (area-averaged; a mask averaged then cut at half)."""
    if shrink == 1:
        return picture
    size = (max(1, round(picture.width / shrink)), max(1, round(picture.height / shrink)))
    small = picture.resize(size, Image.BOX)
    return small.point(lambda v: 255 if v >= 128 else 0) if mask else small


def derive(source: Path, out: Path, kind: str, seed: int = 0, shrink: int = 1) -> Path:
    """Write the `kind` derivative of the mvtec-layout folder `source` (shrunk 1/`shrink` first) under `out`;
    returns its folder."""
    dataset = load_dataset("mvtec", source)
    target = out / set_name(Path(dataset.root).name, kind, shrink)
    rng = np.random.default_rng(seed)
    root = Path(dataset.root)
    for sample in progress(dataset.train + dataset.test, f"{target.name}"):
        rel = sample.path.relative_to(root)
        with Image.open(sample.path) as picture:
            picture.load()
        picture = shrunk(picture, shrink)
        mask = None
        keep = None
        if sample.mask is not None:
            with Image.open(sample.mask) as m:
                mask = shrunk(m.convert("L"), shrink, mask=True)
            ys, xs = np.nonzero(np.asarray(mask) > 127)
            if len(xs):
                keep = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        cw, ch = SHAPES[kind](rng, picture.size)
        x, y = _window(rng, picture.size, (cw, ch), keep)
        box = (x, y, x + cw, y + ch)
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        picture.crop(box).save(target / rel)
        if mask is not None:
            mask_rel = sample.mask.relative_to(root)
            (target / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            mask.crop(box).save(target / mask_rel)
    for name in ("license.txt", "readme.txt"):
        if (root / name).is_file():
            (target / name).write_bytes((root / name).read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dev_sets", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="mvtec-layout folder to derive from")
    parser.add_argument("--out", required=True, help="folder to write the derived sets into")
    parser.add_argument("--kinds", default="strips,crops", help="comma-separated: strips, crops, whole")
    parser.add_argument("--shrink", default="1", help="comma-separated divisors of the pictures' sides (1: as they "
                        "are), e.g. 3,4 for the small-picture sets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        shrinks = [int(n) for n in args.shrink.split(",")]
    except ValueError:
        raise DataError(f"--shrink takes whole numbers, got {args.shrink!r}.") from None
    if any(n < 1 for n in shrinks):
        raise DataError("--shrink divisors must be at least 1.")
    kinds = args.kinds.split(",")
    for kind in kinds:
        if kind not in SHAPES:
            raise DataError(f"Unknown kind {kind!r}; choose from {', '.join(SHAPES)}.")
    for shrink in shrinks:
        for kind in kinds:
            print(derive(Path(args.data), Path(args.out), kind, args.seed, shrink))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
