"""PatchCore on generated textures: defects outscore good, the map points at the defect, bundles reload exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic import add_defect, faint_blotch, on_defect, texture, thin_line
from training.calibration import FALSE_ALARM_TARGET, balanced_accuracy_threshold, calibrate, operating_point
from xai.bundle import load, load_patchcore, read_meta
from xai.inspector import Inspector
from xai.patchcore import PatchCore, PatchCoreConfig, gaussian_blur


@pytest.fixture(scope="module")
def inspector(texture_bundle, trunk):
    return Inspector(load(texture_bundle), trunk)


def test_defects_score_above_good_and_threshold_separates(inspector):
    rng = np.random.default_rng(123)
    good = [inspector.detect(texture(rng)).score for _ in range(6)]
    bad = [inspector.detect(add_defect(texture(rng), rng, kind)[0]).score for kind in ("scratch", "blob") * 3]
    assert min(bad) > max(good), (good, bad)
    assert sum(s > inspector.threshold for s in good) <= 1, (good, inspector.threshold)  # ~5 % false alarms
    assert all(s > inspector.threshold for s in bad)


@pytest.mark.parametrize("kind", ["scratch", "blob"])
def test_anomaly_map_maximum_falls_on_the_defect(inspector, kind):
    rng = np.random.default_rng(7)
    for _ in range(3):
        image, mask = add_defect(texture(rng), rng, kind)
        result = inspector.detect(image)
        assert on_defect(result.anomaly_map, mask), f"peak off the {kind}"  # 8 px: DESIGN.md's pointing game
        assert result.is_defect and result.label == "defect"


def test_map_is_finite_input_sized_and_timed(inspector):
    result = inspector.detect(texture(np.random.default_rng(1)))
    assert result.anomaly_map.shape == (320, 320) and result.anomaly_map.dtype == np.float32  # the detector's view
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
    meta = read_meta(bundle.path)
    assert {"patchcore.safetensors", "patchcore.faiss", "bundle.json", "README.md"} <= {
        p.name for p in texture_bundle.iterdir()}
    assert meta["components"]["patchcore"]["threshold"] == meta["thresholds"]["patchcore"]
    assert meta["trunk"]["weights_sha256"] and meta["preprocessing"]["input_size"] == 224
    assert not any(p.suffix in (".pkl", ".pt", ".pth", ".bin") for p in texture_bundle.iterdir())


def test_threshold_follows_the_documented_rule(texture_bundle):
    comp = read_meta(texture_bundle)["components"]["patchcore"]
    cal = comp["calibration"]
    good, synthetic = np.array(cal["good_scores"]), np.array(cal["synthetic_scores"])
    assert cal["n_images"] == len(good) >= 3 and cal["n_synthetic"] == len(synthetic) == 4 * len(good)
    scale = good.std(ddof=1) * np.sqrt(6) / np.pi  # a Gumbel by its moments: the 95 % point of the good maxima
    expected = good.mean() - 0.5772157 * scale - scale * np.log(-np.log(0.95))
    assert comp["threshold"] == pytest.approx(expected, rel=1e-4)
    assert cal["synthetic"]["detection_rate"] == pytest.approx(float(np.mean(synthetic > comp["threshold"])), abs=1e-4)
    assert cal["false_alarm_rate"] == pytest.approx(float(np.mean(good > comp["threshold"])), abs=1e-4)
    assert "quantile" in comp["threshold_rule"] and "synthetic" in (texture_bundle / "README.md").read_text()


def test_good_quantile_rule_gives_its_operating_point():
    rng = np.random.default_rng(0)
    good, synthetic = rng.gumbel(1.0, 0.3, 2000), rng.gumbel(2.5, 0.3, 2000)  # maxima: right-skewed, like real scores
    evidence = calibrate(good, synthetic)
    assert evidence["false_alarm_rate"] == pytest.approx(FALSE_ALARM_TARGET, abs=0.01)
    fresh = rng.gumbel(1.0, 0.3, 20000)  # the documented rate holds on good pictures never seen
    assert np.mean(fresh > evidence["threshold"]) == pytest.approx(FALSE_ALARM_TARGET, abs=0.01)
    few = [np.mean(fresh > calibrate(rng.gumbel(1.0, 0.3, 5), synthetic)["threshold"]) for _ in range(200)]
    assert 0.02 < np.median(few) < 0.12  # and roughly so from 5 held-out pictures
    assert evidence["synthetic"]["detection_rate"] == pytest.approx(np.mean(synthetic > evidence["threshold"]))
    # mean + 3 sd (the rule of #2) sits far above the 95 % point on skewed scores
    assert good.mean() + 3 * good.std() > evidence["threshold"] * 1.2


def test_balanced_accuracy_rule_for_real_defects_gives_its_operating_point():
    rng = np.random.default_rng(0)
    good = rng.normal(1.0, 0.1, 400)
    defect = rng.normal(1.6, 0.2, 400)
    t = balanced_accuracy_threshold(good, defect)
    # equal-variance-free optimum lies between the means; check it is the best achievable balanced accuracy
    candidates = np.linspace(0.5, 2.5, 4001)
    best = max(((good <= c).mean() + (defect > c).mean()) / 2 for c in candidates)
    assert ((good <= t).mean() + (defect > t).mean()) / 2 >= best - 1e-9
    point = operating_point(good, defect, t)
    assert point["false_alarm_rate"] < 0.05 and point["detection_rate"] > 0.9
    # separable groups: the lowest optimal threshold, i.e. the highest good score (no held-out false alarm)
    assert balanced_accuracy_threshold([0.1, 0.3, 0.2], [0.9, 0.8]) == pytest.approx(0.3)
    assert operating_point([0.1, 0.3, 0.2], [0.9, 0.8], 0.3) == {"false_alarm_rate": 0.0, "detection_rate": 1.0}
    with pytest.raises(ValueError):
        balanced_accuracy_threshold([], [1.0])


def test_real_defects_take_the_place_of_synthetic_ones():
    good, synthetic, real = np.array([0.1, 0.2, 0.3]), np.array([2.0, 3.0]), np.array([0.25, 0.5])
    evidence = calibrate(good, synthetic, real)
    # t = 0.2: 2 of 3 good passed, both real defects caught (balanced accuracy 0.83; at 0.3 it is 0.75)
    assert evidence["threshold"] == pytest.approx(0.2) and "real defective" in evidence["threshold_rule"]
    assert evidence["real"]["detection_rate"] == 1.0 and evidence["synthetic"]["detection_rate"] == 1.0


def test_calibration_images_never_enter_the_bank_that_scores_them(texture_bundle, texture_data, tmp_path):
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig

    comp = read_meta(texture_bundle)["components"]["patchcore"]  # 14 pictures: cross-fitted, all in the final bank
    assert comp["calibration"]["method"] == "cross_fit" and comp["calibration"]["folds"] == 5
    assert set(comp["calibration"]["images"]) == set(comp["bank_images"]) and len(comp["bank_images"]) == 14
    dataset = load_dataset("mvtec", texture_data)
    dataset.train = dataset.train * 3  # 42 pictures: a held-out 10 % that never enters the bank
    info = fit(dataset, tmp_path / "b", PatchCoreConfig())
    assert info["calibration"]["method"] == "held_out" and info["calibration"]["n_images"] == 4
    assert len(info["bank_images"]) == 38


def test_gaussian_blur_preserves_mass_and_spreads_a_point():
    x = torch.arange(-16, 17, dtype=torch.float32)  # 4 sigma either side
    kernel = torch.exp(-0.5 * (x / 4.0) ** 2)
    kernel /= kernel.sum()
    impulse = torch.zeros(1, 65, 65)
    impulse[0, 32, 32] = 1.0
    out = gaussian_blur(impulse, 4.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 32, 32] == out.max()
    # separable Gaussian: profile through the centre matches the 1-D kernel times its peak
    np.testing.assert_allclose(out[0, 32, 16:49].numpy(), (kernel * kernel[16]).numpy(), atol=1e-6)


def test_approximate_index_recalls_exact_search_on_a_generated_bank():
    """The approximate index at the shipped settings (IVF) against exact search on a clustered bank (patches of
    few kinds, like a product's) with queries near it and far from it (defects): recall@1 >= 0.99."""
    from xai.patchcore import build_index, search

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 48)).astype(np.float32) * 3
    patches = (centres[rng.integers(0, 64, 20000)] + rng.normal(size=(20000, 48))).astype(np.float32)
    sources = np.zeros((len(patches), 3), dtype=np.int64)
    model = PatchCore(PatchCoreConfig(coreset_ratio=0.5))
    facts = model.build_memory_bank(patches, sources)
    assert facts["bank_size"] == 10000 and facts["index"] == "IndexIVFFlat"  # auto: IVF past FLAT_INDEX_MAX
    near = centres[rng.integers(0, 64, 1500)] + rng.normal(size=(1500, 48))
    far = rng.normal(size=(500, 48)) * 6
    queries = np.concatenate([near, far]).astype(np.float32)
    exact, _ = search(build_index(model.memory_bank.numpy(), "flat"), queries)
    approx, _ = search(model.index, queries)
    recall = np.mean(np.sqrt(np.maximum(approx[:, 0], 0)) <= np.sqrt(np.maximum(exact[:, 0], 0)) + 1e-4)
    assert recall >= 0.99, recall
    assert (approx[:, 0] >= exact[:, 0] - 1e-3).all()  # an approximate neighbour is never nearer than the true one
    assert model.index.nprobe == model.config.ivf_probes


def test_each_pictures_farthest_patches_are_searched_again_with_more_probes():
    """IVF only ever overstates a distance, so the farthest patches (those that decide the score) are searched again
    at REFINE_PROBES times the probes: they then equal that search, the rest keep the cheap one, and no distance
    rises."""
    from xai.patchcore import REFINE_MIN, REFINE_PROBES, build_index, refine_farthest, search

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(64, 48)).astype(np.float32) * 3
    bank = (centres[rng.integers(0, 64, 12000)] + rng.normal(size=(12000, 48))).astype(np.float32)
    index = build_index(bank, "ivf", probes=2)
    queries = np.concatenate([centres[rng.integers(0, 64, 300)] + rng.normal(size=(300, 48)),
                              rng.normal(size=(20, 48)) * 6]).astype(np.float32)  # 2 pictures of 160 patches
    cheap = np.sqrt(np.maximum(search(index, queries)[0][:, 0], 0)).reshape(2, 160)
    thorough = np.sqrt(np.maximum(search(index, queries, probes=2 * REFINE_PROBES)[0][:, 0], 0)).reshape(2, 160)
    exact = np.sqrt(np.maximum(search(build_index(bank, "flat"), queries)[0][:, 0], 0)).reshape(2, 160)
    refined = refine_farthest(index, queries, cheap)
    assert index.nprobe == 2  # the call's probes did not change the shared index
    assert (refined <= cheap + 1e-6).all() and (refined >= exact - 1e-4).all()
    for picture in range(2):
        top = np.argsort(-cheap[picture])[:REFINE_MIN]
        np.testing.assert_allclose(refined[picture, top], thorough[picture, top], rtol=1e-5)
        rest = np.setdiff1d(np.arange(160), np.argsort(-cheap[picture])[:REFINE_MIN])
        np.testing.assert_array_equal(refined[picture, rest], cheap[picture, rest])
    assert (cheap.max(1) > thorough.max(1) + 1e-4).any()  # the cheap search did overstate a picture's maximum here
    np.testing.assert_allclose(refined.max(1), thorough.max(1), rtol=1e-5)


def test_bundles_written_before_ivf_probes_keep_the_probes_they_were_searched_with():
    """A stored config without `ivf_probes` is searched with the 16 probes it was evaluated with, not today's
    default; a bundle's probes are bounded like its other numbers."""
    from xai.patchcore import IVF_PROBES_BEFORE

    stored = PatchCoreConfig().to_dict()
    del stored["ivf_probes"], stored["refine"]
    assert PatchCoreConfig.from_dict(stored).ivf_probes == IVF_PROBES_BEFORE == 16
    assert PatchCoreConfig.from_dict(PatchCoreConfig(ivf_probes=3).to_dict()).ivf_probes == 3
    assert any("ivf_probes" in p for p in PatchCoreConfig(ivf_probes=10**6).problems())
    assert PatchCoreConfig.from_dict(stored).refine is False  # nor are they refined
    del stored["downsample"]
    assert PatchCoreConfig.from_dict(stored).downsample == "avg"  # and their stride-4 stage is averaged, as it was
    assert any("downsample" in p for p in PatchCoreConfig(downsample="median").problems())


def test_the_plain_settings_leave_the_parts_raw_and_the_borders_alone():
    """part_scaling "none" and border_correction off (the plain PatchCore baseline) fit no scales; the defaults, on
    the same rows and distances, divide each part by its mean norm and lower a border that sits further out."""
    rng = np.random.default_rng(0)
    parts = [torch.from_numpy(rng.normal(0, s, (500, 8)).astype(np.float32)) for s in (1.0, 10.0)]
    distances = [torch.ones(1, 12, 12) for _ in range(3)]
    for d in distances:
        d[0, 0, :] = 3.0  # the outermost top ring is three times the interior's level
    default = PatchCore(PatchCoreConfig(layers=(2, 4), colour_window=0))
    default.fit_layer_scales(parts)
    default.fit_border_scale(distances)
    assert default.layer_scales[1] > 5 * default.layer_scales[0] and default.border_scale[0] < 0.5
    plain = PatchCore(PatchCoreConfig(layers=(2, 4), colour_window=0, part_scaling="none", border_correction=False))
    plain.fit_layer_scales(parts)
    plain.fit_border_scale(distances)
    assert plain.layer_scales.tolist() == [1.0, 1.0] and plain.border_scale.tolist() == [1.0, 1.0, 1.0]


def test_a_strangers_detector_settings_are_refused_in_words_not_exceptions():
    """Every field a bundle carries is checked by type and range; a wrong type is a problem line, never a crash."""
    hostile = {"part_scaling": 5, "border_correction": "yes", "max_side": "a", "aggregation": "3",
               "max_bank_size": -5, "layers": (1, True), "sampler": ["coreset"]}
    for name, value in hostile.items():
        found = PatchCoreConfig(**{name: value}).problems()
        assert any(p.startswith(name) for p in found), (name, found)
    assert PatchCoreConfig().problems() == []
    stored = PatchCoreConfig().to_dict()
    del stored["keep_aspect"], stored["border_correction"]
    assert PatchCoreConfig.from_dict(stored).border_correction is False  # format 1 had no border factors


@pytest.mark.parametrize("make", [thin_line, faint_blotch],
                         ids=["one-pixel line", "large faint blotch"])
def test_defects_of_every_size_peak_on_the_defect(inspector, make):
    """The two ends of the defect-size range: a crack one pixel wide and a faint stain larger than a patch's view.
    Each is found (above every good picture's score) and the map's maximum lies on it. The stain needs the colour
    part (the trunk's features alone scored it no higher than good pictures)."""
    rng = np.random.default_rng(11)
    good = max(inspector.detect(texture(rng)).score for _ in range(4))
    for _ in range(3):
        image, mask = make(texture(rng), rng)
        result = inspector.detect(image)
        assert on_defect(result.anomaly_map, mask), make.__name__
        assert result.score > good, (make.__name__, result.score, good)


def test_the_random_bank_baseline_covers_worse_than_the_coreset_at_equal_size():
    """The bank samplers the benchmark compares: both keep the same number of distinct training patches, and the
    greedy coreset covers the training set more tightly (smaller largest distance) than a random sample."""
    from measures import coverage_radius

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16)).astype(np.float32) * 4
    patches = np.concatenate([centres[rng.integers(0, 40, 3000)] + rng.normal(size=(3000, 16)),
                              rng.normal(size=(30, 16)) * 12]).astype(np.float32)  # a few rare patches
    sources = np.zeros((len(patches), 3), dtype=np.int64)
    radius = {}
    for sampler in ("coreset", "random"):
        model = PatchCore(PatchCoreConfig(coreset_ratio=0.05, sampler=sampler))
        facts = model.build_memory_bank(patches, sources)
        bank = model.memory_bank.numpy()
        assert facts["bank_size"] == 152 and len(np.unique(bank, axis=0)) == 152
        radius[sampler] = coverage_radius(patches, bank)
    assert radius["coreset"] < 0.7 * radius["random"], radius
    with pytest.raises(ValueError, match="unknown bank sampler"):
        PatchCore(PatchCoreConfig(sampler="every")).build_memory_bank(patches, sources)
