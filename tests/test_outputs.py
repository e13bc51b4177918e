"""Output pictures: every save is a new complete file, and old ones are pruned."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from space.outputs import CacheSweeper, OutputFolder


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


def test_the_sweeper_deletes_by_age_and_then_oldest_first_by_size(tmp_path):
    """Eighty files of 5 units arrive within the sweep's age; over a 100-unit budget the oldest go until what is
    left fits, the newest stay, and what is older than the age goes whatever the size."""
    now = time.time()
    uploads, outputs = tmp_path / "uploads", tmp_path / "out"
    files = []
    for i in range(80):
        path = (uploads if i % 2 else outputs) / f"{i:02d}" / "x.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"12345")
        os.utime(path, (now - 80 + i, now - 80 + i))
        files.append(path)
    ancient = outputs / "ancient.bin"
    ancient.write_bytes(b"1")
    os.utime(ancient, (now - 7200, now - 7200))
    sweeper = CacheSweeper([uploads, outputs], every_s=60, age_s=1800, max_bytes=100)
    assert sweeper.sweep() == 1 + 60
    assert not ancient.exists()
    assert [p.exists() for p in files] == [False] * 60 + [True] * 20
    assert sum(p.stat().st_size for p in files if p.exists()) <= 100
    assert sweeper.sweep() == 0  # under budget: nothing more goes
