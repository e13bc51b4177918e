"""PatchCore's greedy k-center coreset, made fast on CPU by running it inside k-means cells.

Written by hand: no maintained library ships k-center greedy selection. Plain greedy reads every
vector once per chosen centre (memory bound: 10 % of 200k patches takes minutes on 2 cores). Here the
(randomly projected) vectors are split into k-means cells (FAISS); each cell runs its own greedy, and
a heap always serves the cell whose farthest point is farthest from its centres, so the selection is
the global greedy one except that a point is covered only by centres of its own cell.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np


def random_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    """Johnson-Lindenstrauss Gaussian projection matrix [dim_in, dim_out] (identity when no reduction)."""
    if dim_out >= dim_in:
        return np.eye(dim_in, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim_in, dim_out)) / math.sqrt(dim_out)).astype(np.float32)


def _cells(x: np.ndarray, n_cells: int, seed: int) -> list[np.ndarray]:
    """Indices of the points in each of `n_cells` k-means cells."""
    import faiss

    if n_cells == 1:
        return [np.arange(len(x))]
    kmeans = faiss.Kmeans(x.shape[1], n_cells, niter=10, seed=seed, max_points_per_centroid=256)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    assign = assign[:, 0]
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_cells + 1))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def kcenter_greedy(x: np.ndarray, n_select: int, seed: int = 0, cell_size: int = 2048,
                   on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Indices of `n_select` rows of `x` chosen by cell-wise greedy k-center (see module docstring);
    `on_progress(n)` is told every 1,024 picks (and at the end) how many more were picked."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_select = int(min(max(n_select, 1), len(x)))
    # At least 8 centres a cell on average, so that no cell is left without one.
    cells = _cells(x, max(1, min(round(len(x) / cell_size), n_select // 8)), seed)
    state = []  # per cell: (indices, vectors, squared norms, min squared distance to its centres)
    heap: list[tuple[float, int]] = []
    selected: list[int] = []

    def add_centre(cell: int, local: int) -> None:
        idx, vec, sq, mind = state[cell]
        selected.append(int(idx[local]))
        dist = sq - 2.0 * (vec @ vec[local]) + sq[local]
        np.minimum(mind, dist, out=mind)
        mind[local] = -1.0  # never pick a centre twice
        far = int(np.argmax(mind))
        if mind[far] > 0:
            heapq.heappush(heap, (-float(mind[far]), cell, far))

    for idx in cells:
        vec = x[idx]
        sq = np.einsum("ij,ij->i", vec, vec)
        state.append((idx, vec, sq, np.full(len(idx), np.inf, dtype=np.float32)))
    # Seed each cell (largest cells first) with its point nearest the cell mean: a real, central point.
    for cell in sorted(range(len(cells)), key=lambda c: -len(cells[c]))[:n_select]:
        vec = state[cell][1]
        add_centre(cell, int(np.argmin(((vec - vec.mean(0)) ** 2).sum(1))))
    reported = 0
    while len(selected) < n_select and heap:
        _, cell, far = heapq.heappop(heap)
        add_centre(cell, far)
        if on_progress is not None and len(selected) - reported >= 1024:
            on_progress(len(selected) - reported)
            reported = len(selected)
    if on_progress is not None and len(selected) > reported:
        on_progress(len(selected) - reported)
    return np.asarray(selected, dtype=np.int64)
