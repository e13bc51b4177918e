"""Dataset layouts of docs/contracts.md (mvtec, imagefolder, elpv) as lists of samples, with deterministic splits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xai.errors import UserError
from xai.io import PICTURE_SUFFIXES

NORMAL_NAMES = frozenset({"good", "ok", "normal", "negative", "free"})  # and any name starting with no_
LAYOUTS = ("mvtec", "imagefolder", "elpv")
# Model input side per layout: solar-cell cracks are a few pixels wide, so ELPV's heads see 320 px
# (docs/benchmarks.md has the comparison with 224).
INPUT_SIZES = {"mvtec": 224, "imagefolder": 224, "elpv": 320}


def input_size_for(layout: str, bundle: Path | None = None) -> int:
    """The size a new component is trained at: the bundle's recorded size when it has one (components of one
    bundle share it), else the layout's default."""
    from xai.bundle import read_bundle_meta

    recorded = read_bundle_meta(Path(bundle)).input_size if bundle is not None else None
    return int(recorded) if recorded else INPUT_SIZES.get(layout, 224)


class DataError(UserError, ValueError):
    """A dataset folder that does not match its layout; the message names the folder or file."""


@dataclass(frozen=True)
class Sample:
    """One image: its file, class label, whether it is defective, and its mask file if any."""

    path: Path
    label: str
    is_defect: bool
    mask: Path | None = None


@dataclass
class Dataset:
    """A layout resolved to train and test samples, plus what a bundle must record about it."""

    layout: str
    root: str
    labels: list[str]
    normal_label: str | None
    train: list[Sample]
    test: list[Sample]
    split: dict | None = None  # written as split.json when the layout needed one
    provenance: dict = field(default_factory=dict)

    @property
    def train_good(self) -> list[Sample]:
        return [s for s in self.train if not s.is_defect]


def is_picture_name(name: str) -> bool:
    """Whether a file is a picture, from its name or its path below what an input names (a folder's file, a zip
    member): the one rule for datasets, batch inputs and uploads. A suffix of xai.io.PICTURE_SUFFIXES, and no hidden
    part (`.name`) or `__MACOSX` folder on the way (macOS's resource forks and metadata are no pictures)."""
    parts = name.replace("\\", "/").split("/")
    hidden = any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in parts)
    return not hidden and Path(parts[-1]).suffix.lower() in PICTURE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_picture_name(p.name))


def is_normal_name(name: str) -> bool:
    """Whether a class (folder) name means good parts: the one rule, for every layout and for batch inspection's
    ground truth (NORMAL_NAMES in any case, or no_*)."""
    name = name.lower()
    return name in NORMAL_NAMES or name.startswith("no_")


def _licence_of(root: Path) -> str | None:
    for candidate in (root / "license.txt", root.parent / "license.txt", root / "LICENSE"):
        if candidate.is_file():
            first = candidate.read_text(errors="replace").strip().splitlines()[0].strip()
            if "NonCommercial-ShareAlike 4.0" in first:
                return "cc-by-nc-sa-4.0"
            return first[:80]
    return None


def load_mvtec(root: Path) -> Dataset:
    """`root/train/good`, `root/test/<good|defect>`, `root/ground_truth/<defect>/<stem>_mask.png`."""
    good_dir = root / "train" / "good"
    if not good_dir.is_dir():
        raise DataError(f"{good_dir} does not exist: an mvtec-layout folder needs train/good/ with normal images.")
    train = [Sample(p, "good", False) for p in list_images(good_dir)]
    if not train:
        raise DataError(f"{good_dir} holds no images (.png, .jpg, ...).")
    test: list[Sample] = []
    test_dir = root / "test"
    defect_types = sorted(d.name for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
    for kind in defect_types:
        for path in list_images(test_dir / kind):
            if is_normal_name(kind):
                test.append(Sample(path, "good", False))
                continue
            mask = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            test.append(Sample(path, kind, True, mask if mask.is_file() else None))
    return Dataset("mvtec", str(root), ["good", "defect"], "good", train, test,
                   provenance={"name": root.name, "layout": "mvtec", "license": _licence_of(root)})


def stratified_split(labels: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: within each class a seeded permutation sends round(fraction*n) items to test."""
    labels_arr = np.asarray(labels)
    is_test = np.zeros(len(labels_arr), dtype=bool)
    rng = np.random.default_rng(seed)
    for cls in sorted(set(labels)):
        members = np.flatnonzero(labels_arr == cls)
        n_test = int(round(test_fraction * len(members)))
        if len(members) > 1:
            n_test = min(max(n_test, 1), len(members) - 1)
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test


def _split_dataset(layout: str, root: Path, samples: list[Sample], labels: list[str], normal: str | None,
                   test_fraction: float, seed: int, provenance: dict, relative_to: Path) -> Dataset:
    is_test = stratified_split([s.label for s in samples], test_fraction, seed)
    split = {
        "test_fraction": test_fraction, "seed": seed,
        "test": [str(s.path.relative_to(relative_to)) for s, t in zip(samples, is_test) if t],
    }
    train = [s for s, t in zip(samples, is_test) if not t]
    test = [s for s, t in zip(samples, is_test) if t]
    return Dataset(layout, str(root), labels, normal, train, test, split, provenance)


def load_imagefolder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """`root/<class>/*`; a class named like good/ok/normal/no_* is the normal one."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and list_images(d))
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class folders with images (found {classes or 'none'}).")
    normals = [c for c in classes if is_normal_name(c)]
    normal = normals[0] if normals else None
    samples = [Sample(p, c, c != normal) for c in classes for p in list_images(root / c)]
    labels = ([normal] if normal else []) + [c for c in classes if c != normal]
    return _split_dataset("imagefolder", root, samples, labels, normal, test_fraction, seed,
                          {"name": root.name, "layout": "imagefolder", "license": _licence_of(root)}, root)


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError as exc:
        raise DataError("The ELPV data is not installed: run `pip install elpv-dataset`.") from exc
    return Path(elpv_dataset.__file__).parent / "data"


def load_elpv(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The `elpv-dataset` package: 2,624 solar cells; defective when the defect probability >= 0.5."""
    root = elpv_root()
    rows = [line.split() for line in (root / "labels.csv").read_text().splitlines() if line.strip()]
    samples = [Sample(root / path, "defect" if float(prob) >= 0.5 else "good", float(prob) >= 0.5)
               for path, prob, _kind in rows]
    provenance = {"name": "elpv", "layout": "elpv", "license": "cc-by-nc-sa-4.0",
                  "citation": "Deitsch et al., Automatic classification of defective photovoltaic module cells "
                              "in electroluminescence images, Solar Energy 2019"}
    return _split_dataset("elpv", root, samples, ["good", "defect"], "good", test_fraction, seed, provenance, root)


def load_dataset(layout: str, data: str | Path | None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Resolve `--layout` and `--data` into a Dataset, or raise DataError with one clear sentence."""
    if layout not in LAYOUTS:
        raise DataError(f"Unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    if layout == "elpv":
        return load_elpv(test_fraction, seed)
    if data is None:
        raise DataError(f"--data is required for the {layout} layout.")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist.")
    return load_mvtec(root) if layout == "mvtec" else load_imagefolder(root, test_fraction, seed)


def write_split(dataset: Dataset, bundle_dir: Path) -> None:
    if dataset.split is not None:
        (bundle_dir / "split.json").write_text(json.dumps(dataset.split, indent=1))
