"""Dataset layouts on generated folders: mvtec, imagefolder (stratified, deterministic split) and elpv."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from training.data import DataError, is_normal_name, is_picture_name, load_dataset, stratified_split, write_split


def make_imagefolder(root, counts):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 7 % 255, 0, 0)).save(root / cls / f"{i:03d}.png")
    return root


def test_mvtec_layout(texture_data):
    ds = load_dataset("mvtec", texture_data)
    assert len(ds.train) == 14 and all(not s.is_defect for s in ds.train)
    assert sorted({s.label for s in ds.test}) == ["blob", "good", "scratch"]
    assert all(s.mask is not None and s.mask.is_file() for s in ds.test if s.is_defect)
    assert ds.split is None and ds.labels == ["good", "defect"]


def test_imagefolder_split_is_stratified_deterministic_and_written(tmp_path):
    root = make_imagefolder(tmp_path / "parts", {"ok": 20, "crack": 10, "stain": 5})
    a = load_dataset("imagefolder", root, test_fraction=0.2, seed=0)
    b = load_dataset("imagefolder", root, test_fraction=0.2, seed=0)
    assert [s.path for s in a.test] == [s.path for s in b.test]
    assert a.normal_label == "ok" and a.labels[0] == "ok" and set(a.labels) == {"ok", "crack", "stain"}
    counts = {c: sum(s.label == c for s in a.test) for c in a.labels}
    assert counts == {"ok": 4, "crack": 2, "stain": 1}
    assert not {s.path for s in a.train} & {s.path for s in a.test}
    write_split(a, tmp_path)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["seed"] == 0 and len(saved["test"]) == 7 and saved["test"][0].count("/") == 1
    c = load_dataset("imagefolder", root, test_fraction=0.2, seed=1)
    assert [s.path for s in c.test] != [s.path for s in a.test]


def test_imagefolder_without_normal_class_and_errors(tmp_path):
    ds = load_dataset("imagefolder", make_imagefolder(tmp_path / "a", {"cat1": 5, "cat2": 5}))
    assert ds.normal_label is None
    with pytest.raises(DataError, match="at least two class folders"):
        load_dataset("imagefolder", make_imagefolder(tmp_path / "b", {"only": 3}))
    with pytest.raises(DataError, match="required"):
        load_dataset("mvtec", None)
    with pytest.raises(DataError, match="Unknown layout"):
        load_dataset("coco", tmp_path)


@pytest.mark.parametrize("name, normal", [("good", True), ("OK", True), ("no_defect", True), ("free", True),
                                          ("negative", True), ("crack", False), ("goodish", False)])
def test_normal_class_names(name, normal):
    assert is_normal_name(name) is normal


@pytest.mark.parametrize("name, picture", [("a.png", True), ("line1/B.JPG", True), ("x.webp", True),
                                           ("../../evil.png", True), ("/etc/abs.png", True), ("dir\\c.tif", True),
                                           (".hidden.png", False), ("__MACOSX/._x.png", False),
                                           ("line1/.cache/a.png", False), ("notes.txt", False), ("png", False)])
def test_one_rule_says_what_is_a_picture(name, picture):
    """Folders, globs, zips (training.inspect's and the Space's uploads) and datasets all read it."""
    from training.batch.sources import picture_members

    assert is_picture_name(name) is picture
    info = zipfile.ZipInfo(name)
    assert picture_members([info, zipfile.ZipInfo("folder.png/")]) == ([info] if picture else [])


def test_the_normal_class_rule_is_the_layouts_and_the_batchs(tmp_path):
    from training.batch.sources import is_defect_truth

    root = tmp_path / "part"
    for folder in ("train/good", "test/OK", "test/crack"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / folder / "0.png")
    (root / "train/good/._0.png").write_bytes(b"resource fork")  # no picture, by the one rule
    ds = load_dataset("mvtec", root)
    assert len(ds.train) == 1 and {(s.label, s.is_defect) for s in ds.test} == {("good", False), ("crack", True)}
    assert (is_defect_truth("OK"), is_defect_truth("no_crack"), is_defect_truth("crack"), is_defect_truth(None)) == \
        (False, False, True, None)


def test_stratified_split_keeps_one_of_each_side():
    mask = stratified_split(["a"] * 2 + ["b"] * 50, 0.2, seed=0)
    assert mask[:2].sum() == 1 and mask[2:].sum() == 10


def test_elpv_layout():
    ds = load_dataset("elpv", None)
    assert len(ds.train) + len(ds.test) == 2624
    probs_defect = sum(s.is_defect for s in ds.train + ds.test)
    assert 600 < probs_defect < 1200  # cells with defect probability >= 0.5
    assert ds.provenance["license"] == "cc-by-nc-sa-4.0"
    assert abs(len(ds.test) / 2624 - 0.2) < 0.01
    with Image.open(ds.test[0].path) as im:
        assert im.size == (300, 300)
    assert np.isclose(sum(s.is_defect for s in ds.test) / len(ds.test), probs_defect / 2624, atol=0.01)


def test_input_size_comes_from_the_bundle_then_the_layout(tmp_path):
    import json

    from training.data import input_size_for

    assert input_size_for("elpv") == 320 and input_size_for("mvtec") == 224
    assert input_size_for("imagefolder", tmp_path / "new") == 224  # no bundle yet
    (tmp_path / "bundle.json").write_text(json.dumps({"preprocessing": {"input_size": 256}}))
    assert input_size_for("elpv", tmp_path) == 256  # components of one bundle share their input size
