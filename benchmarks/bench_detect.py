"""Median detect latency at 224 px and its parts (decode, trunk, features, kNN, map), beside reference calls.

    python -m benchmarks.bench_detect --bundle BUNDLE [--images DIR] [--repeats 30]

The machines drift, so each figure is a median over repeats and the straightforward reference calls
(a bare trunk forward; FAISS exact search with the BLAS threshold at 20) run in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import median_ms
from xai.inspector import Inspector
from xai.patchcore import search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", help="folder of test images (default: generated noise images)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    import faiss

    inspector = Inspector.from_source(args.bundle)
    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images = [p.read_bytes() for p in paths[:8]]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (900, 900, 3)).astype(np.uint8) for _ in range(4)]
    bank = inspector.patchcore.memory_bank
    print(f"bundle {args.bundle}: bank {bank.shape[0]} x {bank.shape[1]}, "
          f"index {type(inspector.patchcore.index).__name__}, torch threads {torch.get_num_threads()}")

    parts: dict[str, list[float]] = {}
    for i in range(args.repeats + 1):
        result = inspector.detect(images[i % len(images)])
        if i:
            for key, value in result.timings_ms.items():
                parts.setdefault(key, []).append(value)
    print(f"detect (median of {args.repeats}):")
    for key, values in parts.items():
        print(f"  {key:<11} {statistics.median(values):7.1f} ms")

    pc = inspector.patchcore
    x = inspector.preprocess(Image.fromarray(np.zeros((224, 224, 3), np.uint8)))
    with torch.no_grad():
        ref_trunk = median_ms(lambda: inspector.trunk(x), args.repeats)
        queries = pc.flatten(pc.embed(inspector.trunk(x, upto=max(pc.config.layers))))
    ours_knn = median_ms(lambda: search(pc.index, queries), args.repeats)
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    def blas_search():  # the alternative DESIGN.md measured on a 50k bank
        faiss.cvar.distance_compute_blas_threshold = 20
        search(pc.index, queries)

    ref_knn = median_ms(blas_search, args.repeats)
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    print("reference calls (same process):")
    print(f"  full trunk forward            {ref_trunk:7.1f} ms")
    print(f"  kNN ours ({len(queries)} queries)        {ours_knn:7.1f} ms")
    print(f"  kNN with BLAS threshold 20    {ref_knn:7.1f} ms   ratio ours/that {ours_knn / ref_knn:.2f}")
    total = statistics.median(parts["total"])
    budget = 80.0
    print(f"detect total {total:.1f} ms (budget {budget:.0f} ms): {'within' if total <= budget else 'OVER'} budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
