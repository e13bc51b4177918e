"""Pictures handed to the web layer as files: written whole under a fresh name, then renamed into place.

Why: Gradio saves a returned PIL image by rewriting `<content hash>/image.jpeg` in place, so two requests
with identical outputs (8 clients sending the same photo) truncated a file another response was still
streaming ("Too little data for declared Content-Length"). A file that appears by `os.replace` never
changes under a reader, and Gradio copies a returned path into its cache the same atomic way.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

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
