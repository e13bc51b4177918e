"""Bundles through huggingface_hub: a Hub cache built here, loaded offline (HF_HUB_OFFLINE=1), and publishing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthetic import add_defect, texture
from training import publish
from training.cli import run
from xai.bundle import BundleError, load, parse_source
from xai.inspector import Inspector


def put_in_hub_cache(repo_id: str, files_from: Path, revision: str = "main", commit: str | None = None,
                     subfolder: str | None = None) -> Path:
    """The layout snapshot_download reads offline: refs/<revision> -> commit, snapshots/<commit>/<files>."""
    cache = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    commit = commit or f"{abs(hash((repo_id, revision))):040d}"[:40]
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / revision).write_text(commit)
    target = cache / "snapshots" / commit / (subfolder or "")
    shutil.copytree(files_from, target, dirs_exist_ok=True)
    return target


def test_load_from_hub_cache_gives_identical_scores(texture_bundle, trunk):
    put_in_hub_cache("defect-xai/weave", texture_bundle)
    hub = Inspector(load("defect-xai/weave"), trunk)
    local = Inspector(load(texture_bundle), trunk)
    assert "models--defect-xai--weave" in str(hub.bundle.path)
    image = add_defect(texture(np.random.default_rng(3)), np.random.default_rng(4))[0]
    assert hub.detect(image).score == local.detect(image).score


def test_revision_and_subfolder(texture_bundle):
    put_in_hub_cache("defect-xai/multi", texture_bundle, revision="v1", commit="b" * 40, subfolder="weave")
    bundle = load("defect-xai/multi@v1/weave")
    assert bundle.path.name == "weave" and "b" * 40 in str(bundle.path)
    assert load("defect-xai/multi", revision="v1", subfolder="weave").path == bundle.path


def test_missing_repo_offline_names_repo_and_fix():
    with pytest.raises(BundleError, match=r"defect-xai/absent@v9 is not in the local Hugging Face cache.*fit_"):
        load("defect-xai/absent@v9")


@pytest.mark.parametrize("source, parsed", [
    ("org/name", ("org/name", None, None)),
    ("org/name@v1.2", ("org/name", "v1.2", None)),
    ("org/name/sub/dir", ("org/name", None, "sub/dir")),
    ("org/name@main/sub", ("org/name", "main", "sub")),
])
def test_parse_source(source, parsed):
    assert parse_source(source) == parsed


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no bundle.json"):
        load(tmp_path)
    with pytest.raises(BundleError, match="neither a local bundle folder"):
        load("just-a-name")


def test_publish_dry_run_lists_files(texture_bundle, capsys):
    assert run(publish.main, ["--bundle", str(texture_bundle), "--repo-id", "me/weave", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("bundle.json", "README.md", "patchcore.safetensors", "patchcore.faiss"):
        assert name in out
    thumbnails = len(list((texture_bundle / "retrieval").iterdir()))
    assert thumbnails == 14  # the bank images: all 14 good ones (fewer than 30 are cross-fitted, none held out)
    # every file of the bundle (other tests may have stored examples/ in this shared bundle by now)
    files = [p for p in texture_bundle.rglob("*") if p.is_file()]
    assert f"would upload {len(files)} files" in out and "me/weave" in out and "retrieval/00000.jpg" in out


def test_publish_refuses_pickles_and_reports_offline(texture_bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(texture_bundle, copy)
    assert run(publish.main, ["--bundle", str(copy), "--repo-id", "me/weave"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    (copy / "extra.pt").write_bytes(b"\x80\x04")
    assert run(publish.main, ["--bundle", str(copy), "--repo-id", "me/weave", "--dry-run"]) == 2
    assert "pickle-format files (extra.pt)" in capsys.readouterr().err
    assert run(publish.main, ["--bundle", str(texture_bundle), "--repo-id", "bad", "--dry-run"]) == 2
