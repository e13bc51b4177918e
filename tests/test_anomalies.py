"""Synthetic anomalies: the returned mask is exactly the set of changed pixels, and every kind changes some."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic import texture
from training.anomalies import GENERATORS, perlin_noise, synthesize


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_mask_matches_changed_pixels(kind):
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = texture(rng, 224)
        out, mask = GENERATORS[kind](image, rng)
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, (out != image).any(-1))
        assert 0 < mask.mean() < 0.25, f"{kind} changed {mask.mean():.3f} of the image"


def test_synthesize_is_seeded_and_varied():
    image = texture(np.random.default_rng(1), 224)
    a = synthesize(image, np.random.default_rng(5))
    b = synthesize(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    kinds = {synthesize(image, np.random.default_rng(s))[2] for s in range(40)}
    assert kinds == set(GENERATORS)


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise((128, 128), (4, 4), np.random.default_rng(0))
    assert np.abs(noise).max() <= 1.5 and noise.std() > 0.1
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # no jumps between neighbouring pixels


def test_synthetic_anomalies_work_on_long_thin_and_tiny_pictures():
    """A fit of pictures 4:1 or longer once failed at random inside the cut-paste anomaly ("high <= 0")."""
    rng = np.random.default_rng(0)
    for shape in [(8, 37, 3), (8, 30, 3), (37, 8, 3), (20, 400, 3), (400, 20, 3), (8, 8, 3)]:
        for _ in range(100):
            image = rng.integers(0, 255, shape, dtype=np.uint8)
            made, mask, _ = synthesize(image, rng)
            assert made.shape == image.shape and mask.shape == shape[:2]
