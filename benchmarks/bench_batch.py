"""Batch inspection throughput and memory: the per-picture `Inspector.detect` loop against the local engine and
Ray Data on one machine, in pictures per second (decode included), and resident memory over a long run.

    python -m benchmarks.bench_batch --bundle BUNDLE --input DIR [--repeats 3] [--batch-size 16]
    python -m benchmarks.bench_batch --bundle BUNDLE --generate 400 [--size 224]      (224 x 224 JPEGs)
    python -m benchmarks.bench_batch --bundle BUNDLE --memory 5000                     (RSS every 500 pictures)
    python -m benchmarks.bench_batch --bundle BUNDLE --input DIR --stages               (where the loop's time goes)

Each engine's figure is the median of --repeats runs in this process, one after another (never side by side: the
machine has 2 cores). The inspector is loaded once before timing for the loop and the local engine; Ray is started
before timing and its actors load the bundle inside the timed run (said beside the figure).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from training.batch.local import inspect_local
from training.batch.pipeline import DEFAULT_BATCH
from training.batch.sources import Item, list_inputs
from xai.cores import usable_cores
from xai.inspector import Inspector
from xai.io import ImageInputError


def generate(folder: Path, n: int, size: int) -> Path:
    """`n` woven-looking JPEGs of size x size (a seeded texture with noise), a few with a dark blotch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 40 * np.sin(xx / 3.0) * np.cos(yy / 3.0)
    for i in range(n):
        picture = base + rng.normal(0, 12, (size, size))
        if i % 10 == 0:
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            picture[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 12) ** 2] -= 70
        rgb = np.repeat(np.clip(picture, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def rss_mb() -> float:
    """Resident memory now (from /proc; falls back to the peak where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engines(bundle: str, items: list[Item], repeats: int, batch_size: int, engines: list[str]) -> dict:
    inspector = Inspector.from_source(bundle)
    todo = list(enumerate(items))
    runs: dict[str, list[float]] = {e: [] for e in engines}
    if "ray" in engines:
        from training.batch.ray import inspect_ray, start_ray

        start_ray()
    inspector.detect(items[0].path)  # warm-up
    for _ in range(repeats):
        for engine in engines:
            start = time.perf_counter()
            if engine == "loop":
                for item in items:
                    inspector.detect(item.path)
            elif engine == "local":
                inspect_local(bundle, todo, batch_size, None, lambda rows: None, inspector)
            else:
                inspect_ray(bundle, todo, batch_size, False, False, Path(tempfile.mkdtemp()), None, lambda rows: None)
            runs[engine].append(len(items) / (time.perf_counter() - start))
    return {engine: statistics.median(values) for engine, values in runs.items()}


def stages(bundle: str, items: list[Item]) -> None:
    """Where the per-picture loop's time goes (each stage's median ms) on every core and on one, and an estimate of
    the best the cores could do with the same work: each running a one-thread pipeline, as the local engine does."""
    import faiss
    import torch

    inspector = Inspector.from_source(bundle)
    readable = [item for item in items if not isinstance(inspector.prepare(item.path), ImageInputError)]
    for item in readable[:5]:  # warm-up (and every file read once before either timed pass)
        inspector.detect(item.path)
    threads, omp, cores = torch.get_num_threads(), faiss.omp_get_max_threads(), usable_cores()
    seconds: dict[int, float] = {}
    try:
        for n in dict.fromkeys((cores, 1)):
            torch.set_num_threads(n)
            faiss.omp_set_num_threads(n)
            laps: dict[str, list[float]] = {}
            start = time.perf_counter()
            for item in readable:
                for stage, ms in inspector.detect(item.path).timings_ms.items():
                    laps.setdefault(stage, []).append(ms)
            seconds[n] = (time.perf_counter() - start) / len(readable)
            print(f"{n} thread(s): " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in laps.items())
                  + f" ms (medians); {1 / seconds[n]:.2f} pictures/s ({len(readable)} pictures)")
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(omp)
    print(f"estimated best of {cores} one-thread pipelines: {cores / seconds[1]:.2f} pictures/s, "
          f"{seconds[cores] * cores / seconds[1]:.2f}x the loop on {cores} threads, with the same work")


def memory(bundle: str, n: int, batch_size: int) -> None:
    from training.batch.results import ResultsFolder, columns, frame

    with tempfile.TemporaryDirectory() as tmp:
        items = list_inputs(str(generate(Path(tmp) / "pictures", n, 224)))
        results = ResultsFolder(Path(tmp) / "out")
        names = columns(list(Inspector.from_source(bundle).thresholds), False)
        seen = [0]
        print(f"{'pictures':>9} {'RSS MB':>8}")

        def on_rows(rows):
            results.append(frame(rows, names))
            before = seen[0]
            seen[0] += len(rows)
            if seen[0] // 500 > before // 500 or seen[0] == batch_size:
                print(f"{seen[0]:>9} {rss_mb():>8.0f}", flush=True)

        print(f"{0:>9} {rss_mb():>8.0f}")
        inspect_local(bundle, list(enumerate(items)), batch_size, None, on_rows)
        results.finish([i.path for i in items])
        print(f"{'finished':>9} {rss_mb():>8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--input", help="pictures to inspect (anything training.inspect accepts)")
    parser.add_argument("--generate", type=int, default=0, help="inspect this many generated JPEGs instead")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--memory", type=int, default=0, help="RSS over a run of this many generated pictures")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--engines", default="loop,local,ray")
    parser.add_argument("--stages", action="store_true", help="where the loop's time goes, instead of the engines")
    args = parser.parse_args(argv)
    if args.memory:
        memory(args.bundle, args.memory, args.batch_size)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source = str(generate(Path(tmp), args.generate, args.size)) if args.generate else args.input
        items = list_inputs(source)
        if args.stages:
            stages(args.bundle, items)
            return 0
        rates = run_engines(args.bundle, items, args.repeats, args.batch_size, args.engines.split(","))
    loop = rates.get("loop")
    print(f"{len(items)} pictures, batch {args.batch_size}, median of {args.repeats}")
    for engine, rate in rates.items():
        print(f"{engine:>6}: {rate:6.2f} pictures/s" + (f"  ({rate / loop:.2f}x the loop)" if loop else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
