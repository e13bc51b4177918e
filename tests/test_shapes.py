"""Pictures keep their shape, borders are ordinary, and bundles of the earlier square format still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from synthetic import add_defect, on_defect, texture, write_mvtec_folder
from xai.bundle import load, read_meta
from xai.inspector import Inspector
from xai.patchcore import BORDER_RINGS, TRUNK_STRIDE, PatchCore, PatchCoreConfig, ring_index

WIDE = (128, 384)  # height, width of the generated non-square part (3:1)


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory):
    from training.data import load_dataset
    from training.fit_patchcore import fit

    data = write_mvtec_folder(tmp_path_factory.mktemp("wide") / "strip", size=WIDE[0], width=WIDE[1])
    out = tmp_path_factory.mktemp("bundles") / "strip"
    fit(load_dataset("mvtec", data), out, PatchCoreConfig())
    return out


def test_input_shape_keeps_the_aspect_and_grows_with_the_area():
    pc = PatchCore(PatchCoreConfig())
    side = pc.config.short_side
    assert side == 320 and pc.input_shape(900, 900) == (side, side)
    h, w = pc.input_shape(500, 1250)  # a tall commutator-like picture: shorter side 320, not squashed
    assert w == side and abs(h / w - 2.5) < TRUNK_STRIDE / w and h % TRUNK_STRIDE == 0
    h2, w2 = pc.input_shape(1250, 500)
    assert (h2, w2) == (w, h)
    assert pc.input_shape(110, 300)[1] == side  # small pictures come up to the detector's view
    assert PatchCore(PatchCoreConfig(short_side=224)).input_shape(500, 1250)[1] == 224
    assert max(pc.input_shape(100, 10_000)) <= PatchCoreConfig().max_side  # the long side is capped
    assert PatchCore(PatchCoreConfig(keep_aspect=False)).input_shape(500, 1250) == (224, 224)


def test_ring_index_counts_patches_to_the_nearest_border():
    rings = ring_index((7, 10))
    assert rings[0].tolist() == [0] * 10 and rings[:, -1].tolist() == [0] * 7
    assert rings[3, 5] == BORDER_RINGS and rings[1, 1] == 1 and rings[2, 2] == 2


def test_non_square_part_gets_a_map_of_its_shape_with_the_peak_on_the_defect(wide_bundle, trunk):
    inspector = Inspector(load(wide_bundle), trunk)
    rng = np.random.default_rng(11)
    for kind, end in (("blob", 0.88), ("scratch", 0.12)):  # defects near either end of the strip
        image, mask = add_defect(texture(rng, *WIDE), rng, kind, centre=(int(end * WIDE[1]), WIDE[0] // 2))
        result = inspector.detect(image)
        h, w = result.anomaly_map.shape
        assert (h, w) == inspector.patchcore.input_shape(WIDE[1], WIDE[0]) == (320, 960)
        assert result.image_size == (WIDE[1], WIDE[0])
        assert on_defect(result.anomaly_map, mask), f"{kind}: peak off the defect"
        assert result.is_defect


def test_good_borders_are_not_anomalous(texture_bundle, trunk):
    """On a textured part whose border is ordinary surface, good pictures' maps are not highest along the rim,
    and a defect away from the border holds the maximum."""
    inspector = Inspector(load(texture_bundle), trunk)
    scale = read_meta(texture_bundle)["components"]["patchcore"]["border_scale"]
    assert len(scale) == BORDER_RINGS and all(0 < f <= 1 for f in scale)
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(6):
        amap = inspector.detect(texture(rng)).anomaly_map
        band = np.ones_like(amap, dtype=bool)
        band[12:-12, 12:-12] = False
        ratios.append(np.quantile(amap[band], 0.99) / np.quantile(amap[~band], 0.99))
    assert np.median(ratios) < 1.1, ratios
    for kind in ("scratch", "blob"):
        image, mask = add_defect(texture(rng), rng, kind)
        assert on_defect(inspector.detect(image).anomaly_map, mask)


def test_a_square_format_1_bundle_still_loads_and_scores_as_before(texture_bundle, trunk, tmp_path):
    """A bundle written before pictures kept their shape (no keep_aspect in its config) keeps its square
    processing: a non-square picture is squashed, as it was when the bundle was made."""
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(texture_bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta["format_version"] = 1
    config = meta["components"]["patchcore"]["config"]
    del config["keep_aspect"], config["max_side"]
    config.update(max_bank_size=8192, index="auto")
    (old / "bundle.json").write_text(json.dumps(meta))
    tensors = load_file(old / "patchcore.safetensors")
    del tensors["border_scale"]  # format 1 had none
    save_file(tensors, old / "patchcore.safetensors")
    inspector = Inspector(load(old), trunk)
    pc = inspector.patchcore
    assert pc.config.keep_aspect is False and pc.config.index == "flat"  # its "auto" meant exact search
    assert type(pc.index).__name__ == "IndexFlatL2" and pc.border_scale.tolist() == [1.0] * BORDER_RINGS
    wide = texture(np.random.default_rng(3), 128, 384)
    assert inspector.detect(wide).anomaly_map.shape == (224, 224)
    square = Image.fromarray(wide).resize((224, 224), Image.BILINEAR)
    assert inspector.detect(wide).score == pytest.approx(inspector.detect(np.asarray(square)).score, rel=1e-5)


def test_a_bundle_from_a_newer_format_fails_with_one_line(texture_bundle, tmp_path):
    from xai.bundle import BundleError

    future = tmp_path / "future"
    shutil.copytree(texture_bundle, future)
    meta = json.loads((future / "bundle.json").read_text())
    meta["format_version"] = 99
    (future / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="upgrade defect-xai"):
        load(future)


def test_heads_share_the_trunk_forward_only_for_a_square_picture(classifier_bundle, trunk):
    """A square picture: one trunk forward serves PatchCore and the heads. A wide one: the heads get their own
    square input, and their probabilities are exactly those of the head on that input."""
    import torch

    from xai.heads import HEAD_INPUT_STAGE

    inspector = Inspector(load(classifier_bundle), trunk)
    assert "head_trunk" in inspector.detect(texture(np.random.default_rng(1))).timings_ms  # detector sees 320 px
    inspector.patchcore.config.short_side = inspector.input_size  # a detector whose view is the heads' input
    square = inspector.detect(texture(np.random.default_rng(1)))
    assert "head_trunk" not in square.timings_ms
    wide_picture = texture(np.random.default_rng(2), *WIDE)
    wide = inspector.detect(wide_picture)
    assert "head_trunk" in wide.timings_ms and wide.anomaly_map.shape == (224, 672)
    x = inspector.preprocess(Image.fromarray(wide_picture))
    with torch.no_grad():
        probs = inspector.heads["classifier_cnn"](trunk(x, upto=HEAD_INPUT_STAGE)[HEAD_INPUT_STAGE]).softmax(-1)[0]
    expected = dict(zip(inspector.labels, probs.tolist()))
    assert wide.class_probabilities["classifier_cnn"] == pytest.approx(expected, abs=1e-6)


def test_a_bundle_from_before_the_320_view_keeps_its_224_view(texture_bundle, trunk, tmp_path):
    """Format-2 bundles written before the detector had a view of its own (no short_side in their config) saw the
    picture at the bundle's input size, and still do: their bank was built from patches at that scale."""
    old = tmp_path / "round2"
    shutil.copytree(texture_bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    del meta["components"]["patchcore"]["config"]["short_side"], meta["components"]["patchcore"]["config"]["sampler"]
    (old / "bundle.json").write_text(json.dumps(meta))
    inspector = Inspector(load(old), trunk)
    assert inspector.patchcore.config.short_side == 224 and inspector.patchcore.config.sampler == "coreset"
    assert inspector.detect(texture(np.random.default_rng(4), *WIDE)).anomaly_map.shape == (224, 672)


def test_bundle_json_reads_into_typed_metadata_and_back_as_its_own_keys(texture_bundle):
    """A fitted bundle's bundle.json survives BundleMeta unchanged (its top-level thresholds are the components'
    own); a format-1 one comes back in today's format, with the settings that keep it square and exact."""
    from xai.bundle_meta import FORMAT_VERSION, BundleMeta

    stored = json.loads((texture_bundle / "bundle.json").read_text())
    meta = BundleMeta.from_json(stored)
    assert meta.to_json() == stored and meta.thresholds == stored["thresholds"]
    assert meta.patchcore.config == PatchCoreConfig.from_dict(stored["components"]["patchcore"]["config"])
    old = json.loads(json.dumps(stored))
    old["format_version"] = 1
    del old["components"]["patchcore"]["config"]["keep_aspect"], old["components"]["patchcore"]["config"][
        "border_correction"]
    again = BundleMeta.from_json(old).to_json()
    assert again["format_version"] == FORMAT_VERSION
    assert {k: again["components"]["patchcore"]["config"][k] for k in ("keep_aspect", "border_correction")} == {
        "keep_aspect": False, "border_correction": False}


def test_every_config_field_added_later_says_what_its_absence_meant():
    """Each field a migration step fills carries its bounds or choices or flag, and the value older bundles meant."""
    from dataclasses import fields

    from xai.patchcore import CONFIG_MIGRATIONS, CONFIG_VERSIONS

    assert [version for version, _ in CONFIG_MIGRATIONS] == list(CONFIG_VERSIONS)
    for f in fields(PatchCoreConfig):
        assert not f.metadata.get("since") or "before" in f.metadata, f.name
        assert f.name in ("trunk", "layers", "max_bank_size") or {"bounds", "choices", "flag"} & set(f.metadata)
