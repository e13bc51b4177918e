"""The detector's view and smoothing chosen per part at fit time (training.choice), and pictures never enlarged
beyond their own pixels unless the evidence says so."""

from __future__ import annotations

import json

import numpy as np

from training.choice import CONFIDENCE, DEFAULT_SIGMA, DEFAULT_VIEW, VIEWS, costliest, decide, separation
from xai.metrics import auroc
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


def _fit_part(folder, out, trunk, **settings):
    """Fit the detector on a generated part; the part's own test pictures' scores (good, defective) and the choice."""
    from PIL import Image

    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.bundle import load
    from xai.inspector import Inspector

    dataset = load_dataset("mvtec", folder)
    fit(dataset, out, PatchCoreConfig(**settings), trunk=trunk)
    inspector = Inspector(load(out), trunk)
    scores = {s.path: inspector.detect(np.asarray(Image.open(s.path).convert("RGB"))).score for s in dataset.test}
    good, bad = ([scores[s.path] for s in dataset.test if s.is_defect == defect] for defect in (False, True))
    return good, bad, json.loads((out / "bundle.json").read_text())["components"]["patchcore"]["choice"]


def _found(good, bad):
    """How well a fixed detector finds the part's real defects: AUROC and the choice's own separation."""
    return auroc([False] * len(good) + [True] * len(bad), good + bad), float(separation(good, bad))


def _candidate(choice, short_side, enlarge, sigma):
    """The stored candidate of one view and smoothing."""
    key = (short_side, enlarge, sigma)
    return next(c for c in choice["candidates"] if (c["short_side"], c["enlarge"], c["sigma"]) == key)


def test_a_thin_line_on_small_pictures_keeps_the_finer_enlarged_view_that_finds_it(trunk, tmp_path):
    """128 px weave pictures whose real defect is a faint one-pixel line: kept at their own pixels (128x128) the
    trunk hardly sees the line, enlarged it does. The fit's evidence (its own synthetic cracks among the subtle
    defects) must show it: the choice stays at an enlarged view, every own-pixels candidate separates worse than
    the chosen one, and the part's real lines are found better by a detector at the chosen view than by one fitted
    at its own pixels. A choice that went to the coarser view regardless would fail here."""
    from synthetic import faint_line, texture, write_part

    part = write_part(tmp_path / "part", lambda rng: texture(rng, 128),
                      lambda image, rng: faint_line(image, rng, amount=12), "crack", n_train=12, n_test_good=6,
                      n_test_defect=6, seed=0)
    good, bad, choice = _fit_part(part, tmp_path / "chosen", trunk, choose=True)
    chosen = _candidate(choice, **choice["chosen"])
    own = [c for c in choice["candidates"] if not c["enlarge"]]
    assert {c["shape"] for c in own} == {"128x128"} and chosen["enlarge"] and chosen["shape"] != "128x128", chosen
    assert all(c["separation"] < chosen["separation"] for c in own), choice["candidates"]
    fixed = _fit_part(part, tmp_path / "own", trunk, choose=False, short_side=320, enlarge=False,
                      sigma=chosen["sigma"])
    (auc_chosen, sep_chosen), (auc_own, sep_own) = _found(good, bad), _found(*fixed[:2])
    assert auc_chosen >= auc_own and sep_chosen > sep_own, (auc_chosen, sep_chosen, auc_own, sep_own)


def test_a_faint_area_under_a_fine_grain_moves_the_choice_to_the_coarser_view_that_finds_it(trunk, tmp_path):
    """320 px pictures of a surface under a fine grain, whose real defect is a large stain 6 grey levels faint (the
    faintest of the fit's own faint areas): at the default 320 px view the grain hides it, the 224 px view averages
    the grain away. The fit's evidence (its own faint areas among the subtle defects) must move the choice off the
    default, beyond the bootstrap's noise, to 224 px, and the part's real stains are found better by a detector at
    the chosen view than by one fitted at the default view. A choice that kept the default regardless would fail
    here."""
    from synthetic import faint_area, grained, write_part

    part = write_part(tmp_path / "part", lambda rng: grained(rng, 320, grain=40),
                      lambda image, rng: faint_area(image, rng, amount=6), "stain", n_train=12, n_test_good=6,
                      n_test_defect=6, seed=0)
    good, bad, choice = _fit_part(part, tmp_path / "chosen", trunk, choose=True)
    chosen = _candidate(choice, **choice["chosen"])
    default = next(c for c in choice["candidates"] if c.get("default"))  # 320 px: enlarged or not the same
    assert default["shape"] == "320x320" and default["sigma"] == DEFAULT_SIGMA and chosen["shape"] == "224x224", chosen
    assert chosen["better_than_default"] >= CONFIDENCE and chosen["separation"] > default["separation"], chosen
    fixed = _fit_part(part, tmp_path / "default", trunk, choose=False, short_side=DEFAULT_VIEW.short_side,
                      enlarge=DEFAULT_VIEW.enlarge, sigma=chosen["sigma"])
    (auc_chosen, sep_chosen), (auc_default, sep_default) = _found(good, bad), _found(*fixed[:2])
    assert auc_chosen > auc_default and sep_chosen > sep_default, (auc_chosen, sep_chosen, auc_default, sep_default)


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

