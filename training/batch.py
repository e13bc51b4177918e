"""Batch inspection's parts that every engine shares: which pictures an input names (folder, glob, zip or list
file, with the ground truth a folder's layout carries), one result row per picture, and a results folder that
streams rows to disk in small Parquet parts and resumes where an interrupted run stopped."""

from __future__ import annotations

import glob
import io
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import NORMAL_NAMES, DataError
from xai.io import MAX_BYTES, PICTURE_SUFFIXES, ImageInputError, load_image

ZIP_SEP = "::"  # a zip member's path: ARCHIVE.zip::member/name.png
MAP_SCALE = 1_000  # a 16-bit map PNG holds round(map / threshold x MAP_SCALE): threshold = 1,000, at most 65.5x it
RESULTS, PARTS = "results.parquet", ".parts"


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
    elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".csv"):
        lines = [line.strip().split(",")[0] for line in path.read_text().splitlines()]
        items = [Item(str(_under(path.parent, line))) for line in lines if line and not line.startswith("#")]
    elif path.is_file():
        items = [Item(str(path))]
    elif any(c in spec for c in "*?["):
        items = [Item(p) for p in sorted(glob.glob(spec, recursive=True)) if _is_picture(p)]
    else:
        raise DataError(f"{spec} is no folder, zip, list file or glob that exists.")
    if not items:
        raise DataError(f"{spec} names no pictures ({', '.join(sorted(PICTURE_SUFFIXES))}).")
    return items


def _under(folder: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else folder / name


def _is_picture(name: str) -> bool:
    return Path(name).suffix.lower() in PICTURE_SUFFIXES and not Path(name).name.startswith(".")


def _folder(root: Path) -> list[Item]:
    """mvtec: test/<type>/*; imagefolder (every picture in a class folder, one of them a normal class): those; any
    other folder: every picture below it, without ground truth."""
    if (root / "test").is_dir() and (root / "train").is_dir():
        return [Item(str(p), p.parent.name) for p in _pictures(root / "test")]
    everything = _pictures(root)
    classes = {p.parent for p in everything}
    if len(classes) > 1 and all(c.parent == root for c in classes) and any(
            c.name.lower() in NORMAL_NAMES or c.name.lower().startswith("no_") for c in classes):
        return [Item(str(p), p.parent.name) for p in everything]
    return [Item(str(p)) for p in everything]


def _pictures(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and _is_picture(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _zip(archive: Path) -> list[Item]:
    with zipfile.ZipFile(archive) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir() and _is_picture(i.filename)
                 and "__MACOSX" not in i.filename]
    return [Item(f"{archive}{ZIP_SEP}{name}") for name in sorted(names)]


def is_defect_truth(truth: str | None) -> bool | None:
    """A ground-truth class folder as defective or not (None without one)."""
    if truth is None:
        return None
    name = truth.lower()
    return not (name in NORMAL_NAMES or name.startswith("no_"))


def read_picture(path: str) -> Image.Image:
    """Decode the picture at `path` (a zip member as ARCHIVE::member, its declared size checked before it is read);
    ImageInputError for anything that is not a readable picture, a missing file included."""
    archive, sep, member = path.partition(ZIP_SEP)
    try:
        if not sep:
            return load_image(path)
        with zipfile.ZipFile(archive) as z:
            info = z.getinfo(member)
            if info.file_size > MAX_BYTES:
                raise ImageInputError(f"{member} is {info.file_size / 1e6:.0f} MB unpacked; at most "
                                      f"{MAX_BYTES / 1e6:.0f} MB.")
            return load_image(io.BytesIO(z.read(info)))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:  # missing, a folder, no permission, a damaged zip
        raise ImageInputError(f"cannot read it ({type(exc).__name__})") from None


# -- rows ---------------------------------------------------------------------------------------------------
def columns(components: Sequence[str], labelled: bool) -> list[str]:
    """The results' columns (docs/contracts.md), with `truth` and `truth_is_defect` when the layout has them."""
    return (["path", "width", "height", "label", "is_defect", "score", "threshold", "component"]
            + [f"score_{c}" for c in components] + ["ms", "error"] + (["truth", "truth_is_defect"] if labelled else []))


def row_of(item: Item, found, components: Sequence[str]) -> dict:
    """One result row: a Detection's verdict and every component's score (its ms: reading, decoding, preparing
    and its share of the model's work), or an error's message (the picture could not be read) with empty verdict
    fields."""
    row = {"path": item.path, "truth": item.truth, "truth_is_defect": is_defect_truth(item.truth)}
    if isinstance(found, Exception):
        row.update(width=None, height=None, label=None, is_defect=None, score=None, threshold=None, component=None,
                   ms=None, error=str(found) or type(found).__name__,
                   **{f"score_{c}": None for c in components})
        return row
    row.update(width=found.image_size[0], height=found.image_size[1], label=found.label, is_defect=found.is_defect,
               score=found.score, threshold=found.threshold, component=found.decided_by,
               ms=round(found.timings_ms.get("total", 0.0), 3), error="",
               **{f"score_{c}": found.scores.get(c) for c in components})
    return row


def frame(rows: list[dict], names: list[str]):
    """Rows as a pandas DataFrame with fixed dtypes, so every part of a run (and every engine) has one schema."""
    import pandas as pd

    data = pd.DataFrame(rows, columns=names)
    for name in names:
        if name in ("width", "height"):
            data[name] = data[name].astype("Int64")
        elif name in ("is_defect", "truth_is_defect"):
            data[name] = data[name].astype("boolean")
        elif name in ("path", "label", "component", "error", "truth"):
            data[name] = data[name].astype("string")
        else:
            data[name] = data[name].astype("float64")
    return data


def save_map(detection, path: Path) -> None:
    """The raw anomaly map as a 16-bit PNG at model resolution: value = map / threshold x MAP_SCALE (the
    threshold is 1,000; clipped at 65,535), the scale also in the PNG's text."""
    from PIL import PngImagePlugin

    threshold = detection.thresholds["patchcore"]
    scaled = np.clip(np.round(detection.anomaly_map / threshold * MAP_SCALE), 0, 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("defect-xai", f"value = anomaly map / threshold x {MAP_SCALE}; threshold {threshold!r}")
    Image.fromarray(scaled).save(path, pnginfo=info)


def artefact_name(item: Item, index: int) -> str:
    """A file name for a picture's map or overlay: its position in the run and its own name (unique, safe)."""
    stem = Path(item.path.rpartition(ZIP_SEP)[2]).stem
    return f"{index:06d}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)[:80]}"


# -- the results folder ---------------------------------------------------------------------------------------
class ResultsFolder:
    """OUTDIR's results: rows are appended as small Parquet parts (each written whole, then renamed into place),
    so an interrupted run loses at most the batch in flight and memory never holds more than one batch; `finish`
    merges the parts with earlier results into results.parquet and results.csv."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.parts = self.out / PARTS
        self.parts.mkdir(parents=True, exist_ok=True)
        self._next = len(list(self.parts.glob("*.parquet")))

    def done(self) -> set[str]:
        """Paths already in the results (earlier runs' and this run's parts)."""
        import pyarrow.parquet as pq

        files = sorted(self.parts.glob("*.parquet"))
        if (self.out / RESULTS).is_file():
            files.append(self.out / RESULTS)
        return {p for f in files for p in pq.read_table(f, columns=["path"]).column("path").to_pylist()}

    def append(self, data) -> None:
        """Write one batch's rows (a DataFrame) as the next part."""
        name = self.parts / f"{self._next:07d}.parquet"
        partial = name.with_suffix(".partial")
        data.to_parquet(partial, index=False)
        os.replace(partial, name)
        self._next += 1

    def finish(self, order: list[str]):
        """results.parquet and results.csv from every part and earlier result, one row per path (in the input's
        `order`); the parts go. Returns the whole table (a DataFrame)."""
        import pandas as pd

        files = ([self.out / RESULTS] if (self.out / RESULTS).is_file() else []) + sorted(self.parts.glob("*.parquet"))
        data = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()
        if len(data):
            rank = {p: i for i, p in enumerate(order)}
            data = data.drop_duplicates("path", keep="last")
            data = data.assign(_rank=data["path"].map(lambda p: rank.get(p, len(rank)))).sort_values(
                ["_rank", "path"], kind="stable").drop(columns="_rank").reset_index(drop=True)
        for name, write in ((RESULTS, lambda p: data.to_parquet(p, index=False)),
                            ("results.csv", lambda p: data.to_csv(p, index=False))):
            partial = self.out / f"{name}.partial"
            write(partial)
            os.replace(partial, self.out / name)
        for part in self.parts.glob("*"):
            part.unlink()
        self.parts.rmdir()
        return data


def batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


# -- one batch, whatever the engine ---------------------------------------------------------------------------
def prepare_all(inspector, items: Sequence[Item]) -> list:
    """Each item read, decoded and made into model inputs (`Inspector.prepare`; reading counted in its decode
    time), or the ImageInputError that stopped it: the CPU work a batch engine does ahead of the model."""
    import time

    out = []
    for item in items:
        start = time.perf_counter()
        try:
            picture = read_picture(item.path)
        except ImageInputError as exc:
            out.append(exc)
            continue
        read_ms = (time.perf_counter() - start) * 1000.0
        prepared = inspector.prepare(picture)
        if not isinstance(prepared, Exception):
            prepared.timings_ms["decode"] += read_ms
        out.append(prepared)
    return out


class Artefacts:
    """Optional files per picture under OUTDIR: maps/ (16-bit raw anomaly maps) and overlays/ (JPEG, as the
    app draws them)."""

    def __init__(self, out: Path, maps: bool, overlays: bool):
        self.maps = Path(out) / "maps" if maps else None
        self.overlays = Path(out) / "overlays" if overlays else None
        for folder in (self.maps, self.overlays):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, item: Item, detection, picture: Image.Image) -> None:
        if detection.anomaly_map is None:
            return
        name = artefact_name(item, index)
        if self.maps is not None:
            save_map(detection, self.maps / f"{name}.png")
        if self.overlays is not None:
            from xai.render import verdict_overlay

            shown = verdict_overlay(picture, detection.anomaly_map, detection.thresholds["patchcore"],
                                    detection.scores["patchcore"])
            shown.save(self.overlays / f"{name}.jpg", quality=88)


def inspect_rows(inspector, indexed: Sequence[tuple[int, Item]], prepared: list,
                 on_detection: Callable[[int, Item, object, Image.Image], None] | None = None) -> list[dict]:
    """Rows for one batch of (index, item) with what `prepare_all` made of them: every readable picture through
    `Inspector.detect_batch` at once, every unreadable one a row with its message. `on_detection(index, item,
    detection, picture)` sees each detection (files per picture, the Space's gallery)."""
    components = list(inspector.thresholds)
    results = iter(inspector.detect_batch([p for p in prepared if not isinstance(p, Exception)]))
    rows = []
    for (index, item), ready in zip(indexed, prepared):
        result = ready if isinstance(ready, Exception) else next(results)
        if on_detection is not None and not isinstance(result, Exception):
            on_detection(index, item, result, ready.image)
        rows.append(row_of(item, result, components))
    return rows
