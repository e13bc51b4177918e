"""What a batch reads: the pictures a folder, glob, zip or list file names (with the ground truth a folder's layout
carries), and one picture read from a file or a zip member. The zip filter and bounded member read here are the
Space's uploads' too (space.uploads)."""

from __future__ import annotations

import glob
import io
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.data import DataError, is_normal_name, is_picture_name
from xai.io import MAX_BYTES, PICTURE_SUFFIXES, ImageInputError, load_image

ZIP_SEP = "::"  # a zip member's path: ARCHIVE.zip::member/name.png
LIST_SUFFIXES = (".txt", ".lst", ".csv")  # a list file: one path a line
# what a damaged, encrypted or oddly compressed zip (or member) raises while it is opened or unpacked
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error)


@dataclass(frozen=True)
class Item:
    """One picture to inspect: its path as the results name it, and its ground truth when the layout has one."""

    path: str
    truth: str | None = None  # the class folder it sits in (mvtec test/<type>, imagefolder <class>)


def list_inputs(spec: str) -> list[Item]:
    """The pictures `spec` names, in a stable order: a folder (recursively; an mvtec folder's test/ split, or an
    imagefolder's class folders, with their classes as ground truth), a zip, a glob, or a list file (.txt, .lst
    or .csv: one path a line, relative to the list's folder). DataError when it names none."""
    path = Path(spec)
    if path.is_dir():
        items = _folder(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        items = _zip(path)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip().split(",")[0] for line in path.read_text().splitlines()]
        items = [Item(str(_under(path.parent, line))) for line in lines if line and not line.startswith("#")]
    elif path.is_file():
        items = [Item(str(path))]
    elif any(c in spec for c in "*?["):
        items = [Item(p) for p in sorted(glob.glob(spec, recursive=True)) if is_picture_name(Path(p).name)]
    else:
        raise DataError(f"{spec} is no folder, zip, list file or glob that exists.")
    if not items:
        raise DataError(f"{spec} names no pictures ({', '.join(sorted(PICTURE_SUFFIXES))}).")
    return items


def _under(folder: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else folder / name


def _folder(root: Path) -> list[Item]:
    """mvtec: test/<type>/*; imagefolder (every picture in a class folder, one of them a normal class): those; any
    other folder: every picture below it, without ground truth."""
    if (root / "test").is_dir() and (root / "train").is_dir():
        return [Item(str(p), p.parent.name) for p in _pictures(root / "test")]
    everything = _pictures(root)
    classes = {p.parent for p in everything}
    if len(classes) > 1 and all(c.parent == root for c in classes) and any(is_normal_name(c.name) for c in classes):
        return [Item(str(p), p.parent.name) for p in everything]
    return [Item(str(p)) for p in everything]


def _pictures(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_picture_name(p.relative_to(root).as_posix()))


def picture_members(infos: Iterable[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The zip entries that are pictures (training.data.is_picture_name on the member's name; folders left out):
    the one zip filter, for `training.inspect --input ZIP` and the Space's uploads alike."""
    return [info for info in infos if not info.is_dir() and is_picture_name(info.filename)]


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, refused (ImageInputError) when its declared size is over xai.io.MAX_BYTES and never
    more than that size plus one byte read (a zip bomb cannot unpack past what it declares; xai.io refuses the
    extra byte). Raises one of ZIP_ERRORS for a member that cannot be unpacked."""
    if info.file_size > MAX_BYTES:
        raise ImageInputError(f"{info.filename} is {info.file_size / 1e6:.0f} MB unpacked; at most "
                              f"{MAX_BYTES / 1e6:.0f} MB.")
    with archive.open(info) as src:
        return src.read(info.file_size + 1)[:MAX_BYTES + 1]


def _zip(archive: Path) -> list[Item]:
    with zipfile.ZipFile(archive) as z:
        names = [info.filename for info in picture_members(z.infolist())]
    return [Item(f"{archive}{ZIP_SEP}{name}") for name in sorted(names)]


def is_defect_truth(truth: str | None) -> bool | None:
    """A ground-truth class folder as defective or not (None without one)."""
    return None if truth is None else not is_normal_name(truth)


def read_picture(path: str) -> Image.Image:
    """Decode the picture at `path` (a zip member as ARCHIVE::member, read with `read_member`); ImageInputError for
    anything that is not a readable picture, a missing file and a damaged or encrypted member included."""
    archive, sep, member = path.partition(ZIP_SEP)
    if not sep:
        try:
            return load_image(path)
        except OSError as exc:  # a folder, no permission
            raise ImageInputError(f"cannot read it ({type(exc).__name__})") from None
    try:
        with zipfile.ZipFile(archive) as z:
            data = read_member(z, z.getinfo(member))
    except ImageInputError:
        raise
    except (KeyError, *ZIP_ERRORS) as exc:  # missing, a folder, no permission, a damaged zip or member
        raise ImageInputError(f"cannot read it ({type(exc).__name__})") from None
    return load_image(io.BytesIO(data))
