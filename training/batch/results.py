"""A batch's results: the table's columns and one row per picture, a results folder that streams rows to disk in
small Parquet parts and resumes where an interrupted run stopped, and the optional files per picture (raw maps,
overlays)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.batch.sources import ZIP_SEP, Item, is_defect_truth

MAP_SCALE = 1_000  # a 16-bit map PNG holds round(map / threshold x MAP_SCALE): threshold = 1,000, at most 65.5x it
RESULTS, PARTS = "results.parquet", ".parts"


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
