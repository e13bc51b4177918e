"""Output pictures: every save is a new complete file, and old ones are pruned."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from space.outputs import OutputFolder


def test_same_picture_twice_gives_two_complete_files(tmp_path):
    folder = OutputFolder(tmp_path)
    picture = Image.new("RGB", (40, 30), (200, 10, 10))
    a, b = folder.save(picture), folder.save(picture, "png")
    assert a != b  # a response never shares (and so never sees rewritten) another response's file
    for path in (a, b):
        with Image.open(path) as image:
            image.load()
            assert image.size == (40, 30)
    assert not list(tmp_path.glob("*.part"))


def test_old_pictures_are_pruned_and_bad_formats_refused(tmp_path):
    folder = OutputFolder(tmp_path, max_age_s=60)
    old = folder.save(Image.new("RGBA", (8, 8)))  # RGBA is flattened for JPEG
    stale = time.time() - 120
    os.utime(old, (stale, stale))
    fresh = folder.save(Image.new("L", (8, 8)))
    assert not os.path.exists(old) and os.path.exists(fresh)
    with pytest.raises(ValueError, match="unknown picture format"):
        folder.save(Image.new("RGB", (8, 8)), "bmp")
