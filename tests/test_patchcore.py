"""PatchCore on generated textures: defects outscore good, the map points at the defect, bundles reload exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import add_defect, texture
from xai.bundle import load, load_patchcore
from xai.inspector import Inspector
from xai.patchcore import PatchCore, PatchCoreConfig, gaussian_blur, gaussian_kernel1d


@pytest.fixture(scope="module")
def inspector(texture_bundle, trunk):
    return Inspector(load(texture_bundle), trunk)


def test_defects_score_above_good_and_threshold_separates(inspector):
    rng = np.random.default_rng(123)
    good = [inspector.detect(texture(rng)).score for _ in range(6)]
    bad = [inspector.detect(add_defect(texture(rng), rng, kind)[0]).score for kind in ("scratch", "blob") * 3]
    assert min(bad) > max(good), (good, bad)
    assert all(s < inspector.threshold for s in good)
    assert all(s > inspector.threshold for s in bad)


@pytest.mark.parametrize("kind", ["scratch", "blob"])
def test_anomaly_map_maximum_falls_on_the_defect(inspector, kind):
    rng = np.random.default_rng(7)
    for _ in range(3):
        image, mask = add_defect(texture(rng), rng, kind)
        result = inspector.detect(image)
        size = result.anomaly_map.shape[0]
        mask_small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size))) > 0
        # dilate by 8 px (the pointing-game tolerance of DESIGN.md)
        from scipy.ndimage import binary_dilation

        mask_small = binary_dilation(mask_small, iterations=8)
        peak = np.unravel_index(np.argmax(result.anomaly_map), result.anomaly_map.shape)
        assert mask_small[peak], f"peak {peak} off the {kind}"
        assert result.is_defect and result.label == "defect"


def test_map_is_finite_input_sized_and_timed(inspector):
    result = inspector.detect(texture(np.random.default_rng(1)))
    assert result.anomaly_map.shape == (224, 224) and result.anomaly_map.dtype == np.float32
    assert np.isfinite(result.anomaly_map).all()
    assert result.score == pytest.approx(float(result.anomaly_map.max()))
    assert set(result.timings_ms) >= {"decode", "trunk", "features", "knn", "map", "total"}
    assert result.to_json()["label"] == "good"


def test_bundle_reloads_bit_exactly(texture_bundle, inspector):
    bundle = load(texture_bundle)
    reloaded = load_patchcore(bundle)
    assert torch.equal(reloaded.memory_bank, inspector.patchcore.memory_bank)
    assert torch.equal(reloaded.layer_scales, inspector.patchcore.layer_scales)
    image = add_defect(texture(np.random.default_rng(5)), np.random.default_rng(6))[0]
    again = Inspector(load(texture_bundle), inspector.trunk).detect(image)
    first = inspector.detect(image)
    assert again.score == first.score
    np.testing.assert_array_equal(again.anomaly_map, first.anomaly_map)
    meta = bundle.meta
    assert {"patchcore.safetensors", "patchcore.faiss", "bundle.json", "README.md"} <= {
        p.name for p in texture_bundle.iterdir()}
    assert meta["components"]["patchcore"]["threshold"] == meta["thresholds"]["patchcore"]
    assert meta["trunk"]["weights_sha256"] and meta["preprocessing"]["input_size"] == 224
    assert not any(p.suffix in (".pkl", ".pt", ".pth", ".bin") for p in texture_bundle.iterdir())


def test_threshold_follows_the_documented_rule(texture_bundle):
    cal = load(texture_bundle).meta["components"]["patchcore"]["calibration"]
    scores = np.array(cal["scores"])
    assert cal["n_images"] == len(scores) >= 3
    expected = scores.mean() + 3 * scores.std(ddof=1)
    assert load(texture_bundle).meta["thresholds"]["patchcore"] == pytest.approx(expected, rel=1e-4)


def test_calibration_images_never_enter_the_bank(texture_bundle):
    comp = load(texture_bundle).meta["components"]["patchcore"]
    assert not set(comp["calibration"]["images"]) & set(comp["bank_images"])


def test_gaussian_blur_preserves_mass_and_spreads_a_point():
    kernel = gaussian_kernel1d(4.0)
    assert kernel.sum().item() == pytest.approx(1.0) and kernel.numel() == 33
    impulse = torch.zeros(1, 65, 65)
    impulse[0, 32, 32] = 1.0
    out = gaussian_blur(impulse, 4.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 32, 32] == out.max()
    # separable Gaussian: profile through the centre matches the 1-D kernel times its peak
    np.testing.assert_allclose(out[0, 32, 16:49].numpy(), (kernel * kernel[16]).numpy(), atol=1e-6)


def test_exact_and_hnsw_index_agree_on_a_small_bank():
    rng = np.random.default_rng(0)
    config = PatchCoreConfig(index="flat")
    model = PatchCore(config)
    patches = rng.normal(size=(3000, 32)).astype(np.float32)
    model.build_memory_bank(patches, n_images=1)
    from xai.patchcore import build_index, search

    queries = rng.normal(size=(200, 32)).astype(np.float32)
    exact, _ = search(model.index, queries)
    approx, _ = search(build_index(model.memory_bank.numpy(), "hnsw"), queries)
    recall = np.mean(np.isclose(exact[:, 0], approx[:, 0], rtol=1e-5))
    assert recall >= 0.95
