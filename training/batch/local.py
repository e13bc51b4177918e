"""The local engine: one single-threaded pipeline (read, decode, resize, model) a core, all sharing one loaded
bundle, rows handed back batch by batch in the input's order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from training.batch.pipeline import batches, inspect_batch
from training.batch.results import Artefacts
from training.batch.sources import Item
from xai.cores import usable_cores


def inspect_local(bundle: str, todo: list[tuple[int, Item]], batch_size: int, artefacts: Artefacts | None,
                  on_rows: Callable[[list[dict]], None], inspector=None, workers: int | None = None) -> None:
    """The local engine: one inspector (the bundle's, unless one is given) shared by `workers` threads (default:
    one a core), each reading, preparing and inspecting a batch at a time with single-threaded torch and FAISS.
    On a 2-core CPU two such pipelines beat one that spreads each step over both cores (the trunk and the search
    do not halve with two threads, and decoding runs on one): see docs/benchmarks.md. At most two batches per
    worker are in flight, so memory does not grow with the run; rows come back in the input's order."""
    import faiss
    import torch

    from xai.inspector import Inspector

    inspector = inspector or Inspector.from_source(bundle)
    workers = workers or usable_cores()
    chunks = iter(batches(todo, batch_size))

    def work(chunk: list[tuple[int, Item]]) -> list[dict]:
        return inspect_batch(inspector, chunk, artefacts.write if artefacts else None)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's setting reaches every thread; FAISS's OpenMP one only the thread that sets it
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="inspect", initializer=faiss.omp_set_num_threads,
                                initargs=(1,)) as pool:
            window = deque(pool.submit(work, chunk) for chunk in islice(chunks, 2 * workers))
            while window:
                rows = window.popleft().result()
                for chunk in islice(chunks, 1):
                    window.append(pool.submit(work, chunk))
                on_rows(rows)
    finally:
        torch.set_num_threads(threads)
