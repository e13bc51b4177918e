"""Shared fixtures: one trunk and one fitted synthetic bundle per test session (fitting is the slow part)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_ad" / "bottle"


@pytest.fixture(scope="session")
def trunk():
    from xai.backbone import create_trunk

    return create_trunk()


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    from synthetic import write_mvtec_folder

    return write_mvtec_folder(tmp_path_factory.mktemp("textures") / "weave")


@pytest.fixture(scope="session")
def texture_bundle(texture_data, tmp_path_factory) -> Path:
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig

    out = tmp_path_factory.mktemp("bundles") / "weave"
    fit(load_dataset("mvtec", texture_data), out, PatchCoreConfig(), log=lambda msg: None)
    return out
