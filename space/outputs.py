"""Pictures handed to the web layer as files: written whole under a fresh name, then renamed into place.

Why: Gradio saves a returned PIL image by rewriting `<content hash>/image.jpeg` in place, so two requests
with identical outputs (8 clients sending the same photo) truncated a file another response was still
streaming ("Too little data for declared Content-Length"). A file that appears by `os.replace` never
changes under a reader, and Gradio copies a returned path into its cache the same atomic way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

LOG = logging.getLogger("defect_xai")
FORMATS = {"jpeg": ("JPEG", {"quality": 90}), "png": ("PNG", {"compress_level": 1}), "webp": ("WEBP", {})}


class OutputFolder:
    """A private folder of output pictures; files older than `max_age_s` are removed as new ones arrive."""

    def __init__(self, root: str | Path | None = None, max_age_s: float = 900.0):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="defect-xai-out-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s

    def save(self, picture: Image.Image, fmt: str = "jpeg") -> str:
        """Write `picture` as `fmt` to a new file and return its path."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown picture format {fmt!r}; use one of {', '.join(FORMATS)}")
        pil_format, options = FORMATS[fmt]
        self.prune()
        name = self.root / f"{uuid.uuid4().hex}.{fmt}"
        partial = name.with_suffix(".part")
        picture = picture.convert("RGB") if pil_format == "JPEG" and picture.mode not in ("RGB", "L") else picture
        picture.save(partial, pil_format, **options)
        os.replace(partial, name)
        return str(name)

    def save_text(self, text: str, suffix: str) -> str:
        """Write `text` to a new file `batch-<id>.<suffix>` (whole, then renamed into place); returns its path."""
        self.prune()
        name = self.root / f"batch-{uuid.uuid4().hex[:12]}.{suffix}"
        partial = name.with_suffix(".part")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, name)
        return str(name)

    def prune(self) -> int:
        """Remove pictures older than max_age_s; returns how many went."""
        cutoff = time.time() - self.max_age_s
        gone = 0
        for path in self.root.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:  # another request pruned it first
                continue
        return gone


class CacheSweeper:
    """Deletes files older than `age_s` under `folders` every `every_s` seconds, in a daemon thread, and then the
    oldest first while all of them together hold more than `max_bytes`: every upload and every returned picture
    lands in Gradio's cache and nothing else removes it (Gradio's own delete_cache iterates a set that requests
    are adding to, so it does not survive concurrent uploads)."""

    def __init__(self, folders: list[str | os.PathLike], every_s: float, age_s: float,
                 max_bytes: int | None = None):
        self.folders, self.every_s, self.age_s = [Path(f) for f in folders], every_s, age_s
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-sweeper", daemon=True)

    def start(self) -> CacheSweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep()
            except Exception:  # never let a sweep failure stop the next one
                LOG.exception("cache sweep failed")

    def sweep(self) -> int:
        """Delete what is older than age_s (and folders left empty), then the oldest while the total is over
        max_bytes; returns how many files went."""
        cutoff = time.time() - self.age_s
        gone = 0
        kept: list[tuple[float, int, Path]] = []  # (modified, bytes, path) of the files left
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                try:
                    if path.is_file() or path.is_symlink():
                        stat = path.lstat()
                        if stat.st_mtime < cutoff:
                            path.unlink()
                            gone += 1
                        else:
                            kept.append((stat.st_mtime, stat.st_size, path))
                    elif path.is_dir() and not any(path.iterdir()) and path.stat().st_mtime < cutoff:
                        path.rmdir()
                except (FileNotFoundError, OSError):
                    continue
        return gone + self._trim(kept)

    def _trim(self, files: list[tuple[float, int, Path]]) -> int:
        """Delete the oldest of `files` until they hold at most max_bytes together (logged: the budget is met by
        deleting pictures younger than the sweep's age, which a visitor may still be about to fetch)."""
        total = sum(size for _, size, _ in files)
        if self.max_bytes is None or total <= self.max_bytes:
            return 0
        gone, freed = 0, 0
        for _, size, path in sorted(files):
            if total - freed <= self.max_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            gone, freed = gone + 1, freed + size
        LOG.warning("cache over its %d MB budget (%d MB): deleted the %d oldest files", self.max_bytes >> 20,
                    total >> 20, gone)
        return gone
