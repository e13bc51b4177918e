"""Shared fixtures: one trunk and one fitted synthetic bundle per test session (fitting is the slow part)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every temporary file of the session (ours, Gradio's, the apps the tests launch, pytest's own) goes under one
# folder that is removed when the session ends, so runs leave nothing behind in the machine's temp folder.
SCRATCH = tempfile.mkdtemp(prefix="dxt-")  # short: Ray puts Unix sockets (107-byte paths) under it
os.environ["TMPDIR"] = tempfile.tempdir = SCRATCH
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
# huggingface_hub reads these at import: the tests never reach the network and use their own cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="defect-xai-hub-cache-")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_ad" / "bottle"


def digest(folder: Path) -> str:
    """One hash of every file under `folder` (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def shared_bundles():
    """The session's shared bundles and their digests: read-only for every test (a test that writes into one
    works on its own copy); checked when the session ends."""
    made: dict[Path, str] = {}
    yield made
    changed = [str(folder) for folder, before in made.items() if digest(folder) != before]
    assert not changed, f"tests changed the shared bundles {changed}; copy a bundle before writing into it"


@pytest.fixture(scope="session")
def trunk():
    from xai.backbone import create_trunk

    return create_trunk()


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    from synthetic import write_mvtec_folder

    return write_mvtec_folder(tmp_path_factory.mktemp("textures") / "weave")


@pytest.fixture(scope="session")
def texture_bundle(texture_data, tmp_path_factory, shared_bundles) -> Path:
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig

    out = tmp_path_factory.mktemp("bundles") / "weave"
    fit(load_dataset("mvtec", texture_data), out, PatchCoreConfig())
    shared_bundles[out] = digest(out)
    return out


@pytest.fixture(scope="session")
def binary_folder(tmp_path_factory) -> Path:
    from synthetic import write_imagefolder

    return write_imagefolder(tmp_path_factory.mktemp("folders") / "binary", classes=("good", "blob"))


@pytest.fixture(scope="session")
def classifier_bundle(binary_folder, tmp_path_factory, shared_bundles) -> Path:
    """Both heads trained briefly on an easy generated good-vs-blob task, plus PatchCore on the good class."""
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from training.train_classifier import TrainConfig, train
    from xai.patchcore import PatchCoreConfig

    out = tmp_path_factory.mktemp("bundles") / "binary"
    dataset = load_dataset("imagefolder", binary_folder)
    fit(dataset, out, PatchCoreConfig())
    train(dataset, out, ["cnn", "vit"], TrainConfig(epochs=6, patience=6, batch_size=8), log=lambda msg: None)
    shared_bundles[out] = digest(out)
    return out


@pytest.fixture(scope="session")
def serve():
    """The one way the tests launch the Space, with its production options (the door, caps, error handling):
    `with serve(catalogue, limits=..., ...) as (url, space):`, keywords being `space.settings.Settings` fields."""
    from space.server import serving
    from space.settings import Settings

    def start(catalogue, build=None, **settings):
        return serving(Settings(**settings), catalogue, build)

    return start


@pytest.fixture(scope="module")
def part(tmp_path_factory):
    """A generated defective part (a blob on the woven texture), saved as PNG."""
    import numpy as np
    from PIL import Image

    from synthetic import add_defect, texture

    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("uploads") / "part.png"
    Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(path)
    return path
