"""A whole batch inspection (`training.inspect`'s Python API): the pictures an input names that OUTDIR's results
lack, through the local or the Ray engine under one progress bar, then the merged results and the report."""

from __future__ import annotations

import time
from pathlib import Path

from training.batch.local import inspect_local
from training.batch.pipeline import DEFAULT_BATCH
from training.batch.results import Artefacts, ResultsFolder, columns, frame
from training.batch.sources import list_inputs
from training.jobs import progress
from xai.bundle import load


def inspect_into(bundle: str, spec: str, out: Path, engine: str = "local", batch_size: int = DEFAULT_BATCH,
                 maps: bool = False, overlays: bool = False, ray_address: str | None = None, top: int = 12,
                 queue: int | None = None, inspector=None):
    """Inspect every picture `spec` names that OUTDIR's results lack; write the results and the report (its review
    queue `queue` pictures long, default training.batch.report.QUEUE). The local engine uses `inspector` when one
    is given (the bundle's, as loaded). Returns the whole results table (a pandas DataFrame)."""
    from training.batch.report import write_report

    items = list_inputs(spec)
    meta = load(bundle).metadata
    names = columns(list(meta.components), any(i.truth is not None for i in items))
    results = ResultsFolder(out)
    done = results.done()
    todo = [(i, item) for i, item in enumerate(items) if item.path not in done]
    artefacts = Artefacts(out, maps, overlays) if maps or overlays else None
    start = time.perf_counter()
    with progress(None, f"inspect ({engine})", total=len(items)) as bar:
        bar.update(len(items) - len(todo))  # resumed: already in the results

        def on_rows(rows: list[dict]) -> None:
            results.append(frame(rows, names))
            bar.update(len(rows))  # and a cancelled job (training.jobs.stop_when) stops here, between two batches

        if todo and engine == "ray":
            from training.batch.ray import inspect_ray

            inspect_ray(bundle, todo, batch_size, maps, overlays, out, ray_address, on_rows)
        elif todo:
            inspect_local(bundle, todo, batch_size, artefacts, on_rows, inspector)
    seconds = time.perf_counter() - start
    table = results.finish([item.path for item in items])
    write_report(out, table, bundle, meta, top=top, queue=queue,
                 run={"engine": engine, "inspected": len(todo), "resumed": len(items) - len(todo), "seconds": seconds})
    return table
