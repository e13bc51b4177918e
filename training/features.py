"""Stream dataset images, decoded and resized in worker threads, as model-ready batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from training.cli import load_sample_image, progress
from training.data import Sample
from xai.backbone import resize_rgb


def image_batches(samples: Sequence[Sample], size: int, batch_size: int = 16,
                  desc: str = "images") -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """uint8 [B, size, size, 3] batches in sample order; PIL decodes in two threads (it releases the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(lambda s: resize_rgb(load_sample_image(s), size), samples)
        with progress(range(len(samples)), desc) as bar:
            for start in range(0, len(samples), batch_size):
                chunk = list(samples[start:start + batch_size])
                arrays = [next(pending) for _ in chunk]
                bar.update(len(chunk))
                yield np.stack(arrays), chunk
