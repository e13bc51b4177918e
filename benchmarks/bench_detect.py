"""Median detect latency and its parts (decode, trunk, features, kNN, map), beside reference calls.

    python -m benchmarks.bench_detect --bundle BUNDLE [--images DIR] [--repeats 30] [--shapes 900x900,500x1250]

The machines drift, so each figure is a median over repeats and the straightforward reference calls
(a bare trunk forward; FAISS exact search, with the default and with the BLAS threshold at 20) run in the same
process. Without --images, generated pictures of each --shape are timed, with ms per 100k model pixels: pictures
keep their aspect, so cost should follow the area.
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
from xai.patchcore import build_index, search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", help="folder of test images (default: generated noise images)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shapes", default="900x900,500x1250", help="generated picture shapes WxH (no --images)")
    args = parser.parse_args(argv)
    import faiss

    inspector = Inspector.from_source(args.bundle)
    bank = inspector.patchcore.memory_bank
    print(f"bundle {args.bundle}: bank {bank.shape[0]} x {bank.shape[1]}, "
          f"index {type(inspector.patchcore.index).__name__}, torch threads {torch.get_num_threads()}")
    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        sets = {args.images: [p.read_bytes() for p in paths[:8]]}
    else:
        rng = np.random.default_rng(0)
        sets = {}
        for shape in args.shapes.split(","):
            w, h = (int(v) for v in shape.split("x"))
            sets[shape] = [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for _ in range(4)]
    total = None
    for name, images in sets.items():
        parts: dict[str, list[float]] = {}
        for i in range(args.repeats + 1):
            result = inspector.detect(images[i % len(images)])
            if i:
                for key, value in result.timings_ms.items():
                    parts.setdefault(key, []).append(value)
        area = result.anomaly_map.size  # the bundle has PatchCore (its bank is printed above)
        median_total = statistics.median(parts["total"])
        total = median_total if total is None else total
        print(f"detect {name} (model input {result.anomaly_map.shape[1]}x{result.anomaly_map.shape[0]}, "
              f"median of {args.repeats}): {median_total:.1f} ms, {median_total / area * 1e5:.1f} ms per 100k px")
        for key, values in parts.items():
            print(f"  {key:<11} {statistics.median(values):7.1f} ms")

    pc = inspector.patchcore
    x = inspector.preprocess(Image.fromarray(np.zeros((224, 224, 3), np.uint8)))
    with torch.no_grad():
        ref_trunk = median_ms(lambda: inspector.trunk(x), args.repeats)
        queries = pc.flatten(pc.embed_image(inspector.trunk, x))
    ours_knn = median_ms(lambda: search(pc.index, queries), args.repeats)
    exact = build_index(bank.numpy(), "flat")
    ref_knn = median_ms(lambda: search(exact, queries), args.repeats)
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    def blas_search():  # the alternative DESIGN.md measured on a 50k bank
        faiss.cvar.distance_compute_blas_threshold = 20
        search(exact, queries)

    blas_knn = median_ms(blas_search, args.repeats)
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    print("reference calls (same process):")
    print(f"  full trunk forward            {ref_trunk:7.1f} ms")
    print(f"  kNN ours ({len(queries)} queries)        {ours_knn:7.1f} ms")
    print(f"  kNN exact (flat)              {ref_knn:7.1f} ms   ratio ours/that {ours_knn / ref_knn:.2f}")
    print(f"  kNN exact, BLAS threshold 20  {blas_knn:7.1f} ms")
    budget = 80.0
    print(f"detect total, first set {total:.1f} ms (budget {budget:.0f} ms for a 224 px-class picture): "
          f"{'within' if total <= budget else 'OVER'} budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
