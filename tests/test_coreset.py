"""The cell-wise greedy k-center coreset covers the data almost as well as plain greedy, far better than random."""

from __future__ import annotations

import numpy as np
from measures import coverage_radius

from xai.coreset import kcenter_greedy, random_projection


def plain_greedy(x: np.ndarray, k: int) -> np.ndarray:
    chosen = [0]
    mind = ((x - x[0]) ** 2).sum(1)
    for _ in range(k - 1):
        nxt = int(np.argmax(mind))
        chosen.append(nxt)
        mind = np.minimum(mind, ((x - x[nxt]) ** 2).sum(1))
    return np.array(chosen)


def clustered(n: int = 6000, d: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(30, d))
    return (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_selects_distinct_indices_of_requested_size_deterministically():
    x = clustered()
    a = kcenter_greedy(x, 300, seed=1, cell_size=500)
    b = kcenter_greedy(x, 300, seed=1, cell_size=500)
    assert len(a) == 300 and len(set(a.tolist())) == 300
    np.testing.assert_array_equal(a, b)


def test_coverage_close_to_plain_greedy_and_far_better_than_random():
    x = clustered()
    k = 300
    ours = coverage_radius(x, x[kcenter_greedy(x, k, cell_size=500)])
    greedy = coverage_radius(x, x[plain_greedy(x, k)])
    random = coverage_radius(x, x[np.random.default_rng(0).choice(len(x), k, replace=False)])
    assert ours <= 1.1 * greedy, (ours, greedy)
    assert ours < 0.8 * random, (ours, random)


def test_asking_for_everything_returns_everything():
    x = clustered(200)
    assert sorted(kcenter_greedy(x, 500).tolist()) == list(range(200))


def test_random_projection_preserves_distances_roughly():
    x = clustered(400, d=256)
    p = random_projection(256, 128, seed=0)
    d_full = np.linalg.norm(x[:200] - x[200:], axis=1)
    d_proj = np.linalg.norm(x[:200] @ p - x[200:] @ p, axis=1)
    ratio = d_proj / d_full
    assert 0.8 < ratio.mean() < 1.2 and ratio.std() < 0.15
    assert np.array_equal(random_projection(16, 32, 0), np.eye(16, dtype=np.float32))
