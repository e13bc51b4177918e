"""Batch inspection on Ray Data: the same rows as the local engine, from a pool of actors that each load the bundle
once. A Ray Data stage of tasks reads the pictures' bytes; `map_batches` runs `RayInspector` on them.

Ray is optional (`pip install -r requirements-ray.txt`). Locally a Ray instance is started and stopped around
the run; `--ray-address` joins an existing cluster, whose nodes need this project's requirements installed
(the `training` and `xai` packages themselves travel with the job as py_modules), the bundle at the same path
or as a Hub id, and OUTDIR on shared storage when --maps or --overlays write files there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from training.batch import Artefacts, Item, inspect_rows, read_picture
from training.data import DataError

INSTALL = "Ray is not installed: pip install -r requirements-ray.txt (or use --engine local)."
PACKAGES = [Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "xai"]
MAX_ACTOR_THREADS = 4  # torch threads per actor: past this, more actors use a machine's cores better


def _ray():
    try:
        import ray
    except ImportError:
        raise DataError(INSTALL) from None
    return ray


def read_bytes(batch):
    """Ray Data stage: each row's picture bytes (a zip member's too); unreadable ones as empty bytes, decoded and
    reported by the actor like any unreadable picture."""
    from training.batch import ZIP_SEP

    out = []
    for path in batch["path"]:
        try:
            if ZIP_SEP in path:
                out.append(b"")  # a zip member: the actor reads it from the archive
            else:
                with open(path, "rb") as fh:
                    out.append(fh.read())
        except OSError:
            out.append(b"")
    batch["data"] = out
    return batch


class RayInspector:
    """One Ray actor: the bundle loaded once, then `Inspector.detect_batch` on each batch of rows."""

    def __init__(self, bundle: str, threads: int, out: str, maps: bool, overlays: bool):
        import torch

        from xai.inspector import Inspector

        torch.set_num_threads(threads)
        self.inspector = Inspector.from_source(bundle)
        self.artefacts = Artefacts(Path(out), maps, overlays) if maps or overlays else None

    def __call__(self, batch):
        import io
        import time

        import pandas as pd

        from xai.io import ImageInputError, load_image

        indexed, pictures = [], []
        for index, path, truth, data in zip(batch["index"], batch["path"], batch["truth"], batch["data"]):
            start = time.perf_counter()
            try:
                picture = load_image(io.BytesIO(data)) if len(data) else read_picture(path)
            except ImageInputError as exc:
                picture = exc
            indexed.append((int(index), Item(path, truth or None)))
            pictures.append((picture, (time.perf_counter() - start) * 1000.0))
        return pd.DataFrame(inspect_rows(self.inspector, indexed, pictures, self.artefacts))


def inspect_ray(bundle: str, todo: list[tuple[int, Item]], batch_size: int, maps: bool, overlays: bool, out: Path,
                address: str | None, on_rows: Callable[[list[dict]], None]) -> None:
    """Run `todo` through a pool of RayInspector actors (sized from the cluster's CPUs) and hand each finished
    batch's rows to `on_rows` as it arrives (Ray Data streams: memory does not grow with the number of pictures)."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"py_modules": [str(p) for p in PACKAGES]})
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts pictures
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = max(1, min(MAX_ACTOR_THREADS, os.cpu_count() or 1, cpus))
        actors = max(1, cpus // threads)
        rows = [{"index": i, "path": item.path, "truth": item.truth or ""} for i, item in todo]
        data = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 4 * actors * 8)))
        data = data.map_batches(read_bytes, batch_size=batch_size, num_cpus=0.25)
        data = data.map_batches(RayInspector, batch_size=batch_size, batch_format="pandas", num_cpus=1,
                                compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_kwargs={"bundle": bundle, "threads": threads, "out": str(out),
                                                       "maps": maps, "overlays": overlays})
        for frame_ in data.iter_batches(batch_size=None, batch_format="pandas"):
            on_rows(frame_.to_dict("records"))
    finally:
        if started:
            ray.shutdown()
