"""Detection metrics on hand-made maps give the known values."""

from __future__ import annotations

import numpy as np
import pytest

from xai.metrics import aupro, auroc, binary_report


def test_auroc_known_values():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.75
    assert auroc([1, 1], [0.1, 0.2]) is None


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:18, 10:12] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, (~masks).astype(float)) == pytest.approx(0.0)


def test_aupro_weights_regions_equally_not_by_size():
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 0:2, 0:2] = True  # small region, found
    masks[0, 20:40, 20:40] = True  # big region, missed
    maps = np.full((1, 40, 40), 0.5)
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 20:40, 20:40] = 0.0
    # PRO jumps to 0.5 at FPR 0 and stays there until every normal pixel is flagged (FPR 1), after which the
    # missed region follows; over [0, 0.3] PRO is 0.5 everywhere.
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-6)
    # pixel AUROC, in contrast, is dominated by the big region
    assert auroc(masks, maps) < 0.6


def test_aupro_interpolates_at_the_fpr_limit():
    rng = np.random.default_rng(0)
    masks = np.zeros((1, 50, 50), bool)
    masks[0, 10:20, 10:20] = True
    maps = rng.random((1, 50, 50))
    # uniform random scores: PRO(FPR) ~ FPR, so the normalised area up to 0.3 is ~0.15
    assert aupro(masks, maps) == pytest.approx(0.15, abs=0.05)


def test_binary_report_at_threshold():
    report = binary_report(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.4]), threshold=0.5)
    assert report["accuracy"] == 0.5 and report["f1"] == pytest.approx(0.5) and report["image_auroc"] == 0.75
