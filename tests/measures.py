"""What tests measure about the library's outputs (shared by several test files; the product never needs them)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def coverage_radius(x: np.ndarray, centres: np.ndarray) -> float:
    """Largest distance from a row of `x` to its nearest centre (the k-center objective)."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    dist, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return float(np.sqrt(max(dist.max(), 0.0)))


def same_outputs(original: nn.Module, fused: nn.Module, example: torch.Tensor, tol: float = 1e-4) -> bool:
    """A fused module against the original on one input (a guard for sibling-order assumptions)."""
    with torch.no_grad():
        a, b = original(example), fused(example)
    if isinstance(a, (list, tuple)):
        return all(torch.allclose(x, y, atol=tol, rtol=tol) for x, y in zip(a, b))
    return bool(torch.allclose(a, b, atol=tol, rtol=tol))
