"""/detect_batch: many pictures (files or zips of them) of one category inspected at once, within caps on pictures,
bytes and model pixels, at low priority so that /detect keeps its speed. The rows are training.inspect's."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from space.lowpriority import run_low_priority
from space.outputs import OutputFolder
from space.parts import fit_megapixels
from space.uploads import UploadError, gather
from training.batch.pipeline import DEFAULT_BATCH, batches, inspect_batch
from training.batch.results import columns, frame
from training.batch.sources import Item
from training.jobs import progress
from xai.render import verdict_overlay

SHOWN_COLUMNS = ["picture", "label", "is_defect", "score", "threshold", "width", "height", "ms", "error"]


@dataclass(frozen=True)
class BatchLimits:
    """What one /detect_batch may cost (configs as data)."""

    max_pictures: int = 64
    max_bytes: int = 200 * 1024 * 1024  # all files together (zip members counted uncompressed)
    max_megapixels: float = 24.0  # model pixels at the detector's view: 64 pictures of 4:3 are about 9 million
    gallery: int = 8  # the most anomalous shown with their overlays


class BatchInspection:
    """Runs one caller's batch: gathers the files into a scratch folder, inspects them in small batches (a progress
    bar per picture), and answers with the table, a CSV file and the most anomalous pictures' overlays."""

    def __init__(self, catalogue, outputs: OutputFolder, limits: BatchLimits | None = None):
        self.catalogue, self.outputs, self.limits = catalogue, outputs, limits or BatchLimits()

    def run(self, files, category):
        """(the table as the page shows it (a DataFrame, SHOWN_COLUMNS), the CSV file's path with every column,
        [(overlay path, caption)] of the most anomalous)."""
        inspector = self.catalogue.get(category)
        limits = self.limits
        scratch = Path(tempfile.mkdtemp(prefix="defect-xai-batch-"))
        try:
            pictures = gather(files, scratch, limits.max_pictures, limits.max_bytes, "pictures to inspect",
                              "batch")
            view = inspector.patchcore.input_shape if inspector.patchcore is not None else None
            megapixels = fit_megapixels(pictures, view, skip_unreadable=True)  # an unreadable file: its row says so
            if megapixels > limits.max_megapixels:
                raise UploadError(f"These pictures come to {megapixels:.0f} million pixels at the detector's view; "
                                  f"one batch may have {limits.max_megapixels:.0f} million. Send fewer pictures.")
            return run_low_priority(self._inspect, inspector, pictures)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _inspect(self, inspector, pictures: list[Path]):
        names = columns(list(inspector.thresholds), labelled=False)
        items = [(i, Item(str(p))) for i, p in enumerate(pictures)]
        worst: list[tuple[float, int, Image.Image, object]] = []  # (score, index, picture, detection), the top few

        def keep_worst(index: int, item: Item, detection, picture: Image.Image) -> None:
            nonlocal worst
            if detection.anomaly_map is not None:
                worst = sorted([*worst, (detection.score, index, _small(picture), detection)],
                               key=lambda w: -w[0])[:self.limits.gallery]

        rows: list[dict] = []
        with progress(None, "inspect", total=len(items)) as bar:  # stops between two batches once cancelled
            for chunk in batches(items, DEFAULT_BATCH):
                rows += inspect_batch(inspector, chunk, keep_worst)
                bar.update(len(chunk))
        for row, picture in zip(rows, pictures):
            row["path"] = _name(picture)  # the name it was sent with: never a server path
        table = frame(rows, names)
        csv = self.outputs.save_text(table.to_csv(index=False), "csv")
        gallery = [(self.outputs.save(verdict_overlay(picture, found.anomaly_map, found.thresholds["patchcore"],
                                                      found.scores["patchcore"])),
                    f"{rows[i]['path']} · {found.label} · score {found.score:.3g}") for _, i, picture, found in worst]
        view = table.rename(columns={"path": "picture"})[SHOWN_COLUMNS].round({"score": 4, "threshold": 4, "ms": 1})
        return view.astype(object).where(view.notna(), None), csv, gallery


def _name(copy: Path) -> str:
    """The uploaded name of a gathered copy (`NNN_<name>`)."""
    return copy.name.split("_", 1)[-1]


def _small(picture: Image.Image) -> Image.Image:
    """A copy at most 512 px on its longer side, for the gallery (the overlay resizes the map onto it)."""
    shrunk = picture.copy()
    shrunk.thumbnail((512, 512))
    return shrunk
