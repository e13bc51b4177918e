"""Batch inspection on Ray Data: the same rows as the local engine, from a pool of actors that each load the bundle
once. Ray Data streams the pictures' paths in batches to `map_batches(RayInspector)`, whose actors read, decode and
inspect them where they run (no picture bytes travel through the object store; a separate reading stage of tasks
started a worker process per task on a 2-core machine and made the run slower than the local engine).

Ray is optional (`pip install -r requirements-ray.txt`). Locally a Ray instance is started and stopped around
the run; `--ray-address` joins an existing cluster, whose nodes need this project's requirements installed
(the `training` and `xai` packages themselves travel with the job as py_modules), the bundle at the same path
or as a Hub id, and OUTDIR on shared storage when --maps or --overlays write files there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from training.batch.pipeline import inspect_batch
from training.batch.results import Artefacts
from training.batch.sources import Item
from training.data import DataError

INSTALL = "Ray is not installed: pip install -r requirements-ray.txt (or use --engine local)."
ROOT = Path(__file__).resolve().parents[2]  # the checkout: training/batch/ray.py
PACKAGES = [ROOT / "training", ROOT / "xai"]  # shipped to a cluster's workers
ACTOR_THREADS = 1  # torch threads per actor: one actor a core, as the local engine runs one pipeline a core


def _ray():
    try:
        import ray
    except ImportError:
        raise DataError(INSTALL) from None
    return ray


class RayInspector:
    """One Ray actor: the bundle loaded once, then `Inspector.detect_batch` on each batch of rows."""

    def __init__(self, bundle: str, threads: int, out: str, maps: bool, overlays: bool):
        import torch

        from xai.inspector import Inspector

        torch.set_num_threads(threads)
        self.threads = threads
        self.inspector = Inspector.from_source(bundle)
        self.artefacts = Artefacts(Path(out), maps, overlays) if maps or overlays else None

    def __call__(self, batch):
        import faiss
        import pandas as pd

        faiss.omp_set_num_threads(self.threads)  # OpenMP's setting holds for the calling thread only

        indexed = [(int(index), Item(path, truth or None))
                   for index, path, truth in zip(batch["index"], batch["path"], batch["truth"])]
        on_detection = self.artefacts.write if self.artefacts else None
        return pd.DataFrame(inspect_batch(self.inspector, indexed, on_detection))


def start_ray(address: str | None = None) -> bool:
    """Connect to the Ray cluster at `address` (None: start a local one) with this project's packages shipped to
    its workers, unless Ray is already running in this process; True when this call started it."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"py_modules": [str(p) for p in PACKAGES]})
    return True


def inspect_ray(bundle: str, todo: list[tuple[int, Item]], batch_size: int, maps: bool, overlays: bool, out: Path,
                address: str | None, on_rows: Callable[[list[dict]], None]) -> None:
    """Run `todo` through a pool of RayInspector actors (sized from the cluster's CPUs) and hand each finished
    batch's rows to `on_rows` as it arrives (Ray Data streams: memory does not grow with the number of pictures)."""
    ray = _ray()
    started = start_ray(address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts pictures
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = ACTOR_THREADS
        actors = max(1, cpus // threads)
        rows = [{"index": i, "path": item.path, "truth": item.truth or ""} for i, item in todo]
        data = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 8 * actors)))
        data = data.map_batches(RayInspector, batch_size=batch_size, batch_format="pandas", num_cpus=1,
                                compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_kwargs={"bundle": bundle, "threads": threads, "out": str(out),
                                                       "maps": maps, "overlays": overlays})
        for frame_ in data.iter_batches(batch_size=None, batch_format="pandas"):
            on_rows(frame_.to_dict("records"))
    finally:
        if started:
            ray.shutdown()
