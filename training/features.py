"""Stream dataset images, decoded and resized in worker threads, as model-ready batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from training.cli import load_sample_image
from training.data import Sample
from training.jobs import progress
from xai.backbone import resize_rgb

# a picture's model shape (h, w) from its (width, height), e.g. PatchCore.input_shape
ShapeRule = Callable[[int, int], tuple[int, int]]


def image_batches(samples: Sequence[Sample], size: int | ShapeRule, batch_size: int = 16,
                  desc: str = "images") -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """uint8 [B, h, w, 3] batches in sample order; `size` is a side (square) or a rule giving each picture's own
    (h, w), and a batch then holds consecutive pictures of one shape. PIL decodes in two threads (it releases
    the GIL)."""

    def prepare(sample: Sample) -> np.ndarray:
        image = load_sample_image(sample)
        return resize_rgb(image, size if isinstance(size, int) else size(*image.size))

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(prepare, samples)
        with progress(range(len(samples)), desc) as bar:
            arrays: list[np.ndarray] = []
            chunk: list[Sample] = []
            for sample in samples:
                array = next(pending)
                if arrays and (array.shape != arrays[0].shape or len(arrays) == batch_size):
                    yield np.stack(arrays), chunk
                    arrays, chunk = [], []
                arrays.append(array)
                chunk.append(sample)
                bar.update(1)
            if arrays:
                yield np.stack(arrays), chunk
