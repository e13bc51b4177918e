"""The detector's view and smoothing chosen per part at fit time (training.choice), and pictures never enlarged
beyond their own pixels unless the evidence says so."""

from __future__ import annotations

import json

import numpy as np

from training.choice import CONFIDENCE, VIEWS, costliest, decide, separation
from xai.patchcore import MIN_SIDE, PatchCore, PatchCoreConfig


def test_a_small_picture_keeps_its_own_pixels_and_a_large_one_comes_to_the_view():
    own = PatchCore(PatchCoreConfig(short_side=320, enlarge=False))
    assert own.input_shape(133, 100) == (96, 128)  # never above its own pixels: a multiple of 32 at or below them
    assert own.input_shape(40, 100) == (96, MIN_SIDE)  # but never below the trunk's smallest side
    assert own.input_shape(900, 900) == (320, 320)  # a larger picture is brought down to the view as before
    assert own.input_shape(1250, 500) == (320, 800)
    enlarged = PatchCore(PatchCoreConfig(short_side=320, enlarge=True))
    assert enlarged.input_shape(133, 100) == (320, 416)
    assert PatchCore(costliest(PatchCoreConfig())).input_shape(133, 100) == (320, 416)  # the budget's bound


def test_separation_keeps_rising_where_an_auroc_is_already_one():
    rng = np.random.default_rng(0)
    good = np.exp(rng.normal(0, 0.1, 40))
    near, far = good.max() * np.array([1.1, 1.2]), good.max() * np.array([1.5, 2.0])
    assert 0.5 < separation(good, near) < separation(good, far) <= 1.0
    assert separation(good, good.min() * np.array([0.5])) < 0.01


def test_the_default_stays_unless_another_candidate_separates_better_beyond_the_noise():
    """Three candidates on the same 12 held-out pictures (4 defects each): one clearly better than the default, one
    better by less than its noise; only the first may replace the default."""
    rng = np.random.default_rng(0)
    good = np.exp(rng.normal(0, 0.2, (3, 12)))
    defects = good[..., None] * np.exp(rng.normal(0.3, 0.4, (3, 12, 4)))
    defects[1] *= 1.6  # clearly better
    defects[2] *= np.exp(rng.normal(0.02, 0.4, (12, 4)))  # the default's separation give or take noise
    winner, better = decide(good, defects, default=0)
    assert winner == 1 and better[1] >= CONFIDENCE > better[2], better
    assert decide(good[[0, 2]], defects[[0, 2]], default=0)[0] == 0


def test_the_fit_stores_every_candidate_and_the_winner_it_uses(texture_data, trunk, tmp_path):
    """The generated weave (256 px) has three distinct views; every candidate is scored, the stored config is the
    winner's, and the model card shows the table."""
    from training.data import load_dataset
    from training.fit_patchcore import fit

    chosen = tmp_path / "chosen"
    fit(load_dataset("mvtec", texture_data), chosen, PatchCoreConfig(choose=True), trunk=trunk)
    meta = json.loads((chosen / "bundle.json").read_text())
    patchcore = meta["components"]["patchcore"]
    choice, config = patchcore["choice"], patchcore["config"]
    # 224 "enlarged" shrinks a 256 px picture like 224 "own pixels": scored once, under the own-pixels name
    assert {(c["short_side"], c["enlarge"]) for c in choice["candidates"]} == {(v.short_side, v.enlarge)
                                                                              for v in VIEWS} - {(224, True)}
    assert {c["shape"] for c in choice["candidates"]} == {"256x256", "224x224", "320x320"}
    assert all(0 <= c["separation"] <= 1 and 0 <= c["auroc"] <= 1 for c in choice["candidates"])
    assert {k: config[k] for k in choice["chosen"]} == choice["chosen"] and config["choose"] is True
    winner = [c for c in choice["candidates"] if all(c[k] == v for k, v in choice["chosen"].items())]
    default = [c for c in choice["candidates"] if c.get("default")]
    assert len(winner) == len(default) == 1
    assert winner == default or winner[0]["better_than_default"] >= CONFIDENCE
    card = (chosen / "README.md").read_text()
    assert "How the detector's settings were chosen" in card and "| 224 | own pixels | 224x224 |" in card


def test_a_bundle_from_before_the_choice_keeps_its_enlarged_view_and_scores(texture_bundle, trunk, tmp_path):
    """Bundles written before round 4 carry no `enlarge` or `choose`: they were enlarged to their view, and load and
    score exactly as before."""
    import shutil

    from xai.bundle import load
    from xai.inspector import Inspector

    copy = tmp_path / "old"
    shutil.copytree(texture_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    config = meta["components"]["patchcore"]["config"]
    config.update(short_side=320, enlarge=True)
    (copy / "bundle.json").write_text(json.dumps(meta))
    picture = np.asarray(np.random.default_rng(1).integers(0, 255, (200, 150, 3)), dtype=np.uint8)
    before = Inspector(load(copy), trunk).detect(picture)
    del config["enlarge"], config["choose"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    old = Inspector(load(copy), trunk)
    assert old.patchcore.config.enlarge is True and old.patchcore.config.choose is False
    after = old.detect(picture)
    assert after.anomaly_map.shape == before.anomaly_map.shape == (416, 320)
    assert after.score == before.score and np.array_equal(after.anomaly_map, before.anomaly_map)

