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
