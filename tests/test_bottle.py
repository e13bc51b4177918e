"""Integration on the real MVTec AD bottle category (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import pytest

from conftest import BOTTLE
from training import evaluate, fit_patchcore
from training.cli import run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"MVTec AD bottle not found at {BOTTLE}")]


def test_bottle_fit_and_evaluate(tmp_path):
    bundle = tmp_path / "bottle"
    assert run(fit_patchcore.main, ["--data", str(BOTTLE), "--out", str(bundle)]) == 0
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--data", str(BOTTLE), "--bundle", str(bundle), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 83
    pc = result["patchcore"]
    # Issue #2 targets: image AUROC 1.000, pixel AUROC >= 0.985.
    assert pc["image_auroc"] == 1.0
    assert pc["pixel_auroc"] >= 0.985
    assert pc["aupro"] >= 0.9
    assert pc["f1"] >= 0.95
    assert json.loads((bundle / "bundle.json").read_text())["data"]["license"] == "cc-by-nc-sa-4.0"
