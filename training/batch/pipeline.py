"""One batch through the model, whatever runs it (the local engine, a Ray actor, the Space's /detect_batch): each
picture read and prepared, the readable ones detected together, every one made into its result row."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from PIL import Image

from training.batch.results import row_of
from training.batch.sources import Item, read_picture
from xai.io import ImageInputError

# pictures per trunk forward: past 2 the activations leave a small CPU's cache (docs/benchmarks.md); larger batches
# pay on machines with more cores
DEFAULT_BATCH = 2

OnDetection = Callable[[int, Item, object, Image.Image], None]  # (index, item, detection, picture)


def batches(items: Sequence, size: int) -> Iterator[list]:
    """`items` in consecutive lists of at most `size`."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def prepare_all(inspector, items: Sequence[Item]) -> list:
    """Each item read, decoded and made into model inputs (`Inspector.prepare`; reading counted in its decode
    time), or the ImageInputError that stopped it: the CPU work a batch engine does ahead of the model."""
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


def inspect_rows(inspector, indexed: Sequence[tuple[int, Item]], prepared: list,
                 on_detection: OnDetection | None = None) -> list[dict]:
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


def inspect_batch(inspector, indexed: Sequence[tuple[int, Item]],
                  on_detection: OnDetection | None = None) -> list[dict]:
    """One batch of (index, item) read, prepared and inspected: `prepare_all`, then `inspect_rows`."""
    return inspect_rows(inspector, indexed, prepare_all(inspector, [item for _, item in indexed]), on_detection)
