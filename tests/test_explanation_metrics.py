"""Explanation-quality metrics on hand-made heatmaps give the known values."""

from __future__ import annotations

import numpy as np
import pytest

from xai.metrics import curve_auc, energy_in_mask, heatmap_auroc, perturbation_curve, pointing_game, rank_correlation


def square_mask():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:40] = True
    return mask


def test_pointing_game_with_tolerance():
    mask = square_mask()
    heat = np.zeros((64, 64))
    heat[15, 35] = 1
    assert pointing_game(heat, mask) == 1.0
    heat = np.zeros((64, 64))
    heat[25, 35] = 1  # 6 px below the mask: inside the 8 px tolerance, outside with none
    assert pointing_game(heat, mask) == 1.0 and pointing_game(heat, mask, tolerance=0) == 0.0
    heat = np.zeros((64, 64))
    heat[50, 5] = 1
    assert pointing_game(heat, mask) == 0.0


def test_energy_in_mask_counts_positive_mass_only():
    mask = square_mask()
    heat = np.full((64, 64), -1.0)
    heat[mask] = 1.0
    heat[0, 0] = 100.0 / 3  # one outside pixel with a third of the inside mass (100)
    assert energy_in_mask(heat, mask) == pytest.approx(0.75)
    assert energy_in_mask(np.zeros((64, 64)), mask) is None


def test_heatmap_auroc_perfect_and_chance():
    mask = square_mask()
    assert heatmap_auroc(mask.astype(float), mask) == 1.0
    assert heatmap_auroc(np.random.default_rng(0).random((64, 64)), mask) == pytest.approx(0.5, abs=0.06)


def test_deletion_and_insertion_known_curves():
    # the "model" scores the mean brightness inside the mask; deleting the mask first drops it at once
    mask = square_mask()
    image = np.zeros((3, 64, 64))
    image[:, mask] = 1.0
    reference = np.zeros_like(image)

    def score(batch):
        return batch[:, 0][:, mask].mean(axis=1)

    good = mask.astype(float)
    deletion = perturbation_curve(score, image, reference, good, steps=16)
    insertion = perturbation_curve(score, image, reference, good, steps=16, insert=True)
    # the mask is 100 of 4096 pixels, so one step (256 pixels) removes / reveals all of it
    np.testing.assert_allclose(deletion, [1.0] + [0.0] * 16)
    np.testing.assert_allclose(insertion, [0.0] + [1.0] * 16)
    assert curve_auc(deletion) == pytest.approx(1 / 32)
    assert curve_auc(insertion) == pytest.approx(1 - 1 / 32)
    worst = perturbation_curve(score, image, reference, -good, steps=16)
    assert curve_auc(worst) > 0.9  # the mask is deleted last


def test_rank_correlation_identity_inverse_and_independence():
    rng = np.random.default_rng(0)
    a = rng.random((224, 224))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert abs(rank_correlation(a, rng.random((224, 224)))) < 0.1
    assert rank_correlation(a, np.ones((224, 224))) is None  # undefined, not 'uncorrelated'
