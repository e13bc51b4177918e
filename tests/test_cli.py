"""Command lines: fit + evaluate end to end on generated data, and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from training import evaluate, fit_patchcore
from training.cli import run


def test_evaluate_writes_the_contract_json_and_stores_metrics(texture_data, texture_bundle, tmp_path):
    import shutil

    texture_bundle = shutil.copytree(texture_bundle, tmp_path / "bundle")  # it writes into the bundle
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--data", str(texture_data), "--bundle", str(texture_bundle), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 8
    pc = result["patchcore"]
    assert {"image_auroc", "f1", "accuracy", "ms_per_image", "pixel_auroc", "aupro"} <= set(pc)
    assert pc["image_auroc"] == 1.0 and pc["pixel_auroc"] > 0.9 and pc["aupro"] > 0.5
    stored = json.loads((texture_bundle / "bundle.json").read_text())["metrics"]["patchcore"]
    assert stored["image_auroc"] == pc["image_auroc"]
    assert "image_auroc" in (texture_bundle / "README.md").read_text()


def test_fit_cli_writes_a_bundle(texture_data, tmp_path):
    out = tmp_path / "bundle"
    assert run(fit_patchcore.main, ["--data", str(texture_data), "--out", str(out), "--coreset-ratio", "0.05"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["category"] == "weave" and meta["data"]["layout"] == "mvtec"
    assert meta["components"]["patchcore"]["fit"]["bank_size"] < meta["components"]["patchcore"]["fit"]["n_patches"]


def one_line_error(main, argv, capsys) -> str:
    assert run(main, argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    err = stderr.strip().splitlines()[-1]  # progress bars may precede it; the error is one last line
    assert err.startswith("error: ") and stderr.count("error: ") == 1
    return err


def test_missing_folder(tmp_path, capsys):
    err = one_line_error(fit_patchcore.main, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")], capsys)
    assert "nope does not exist" in err


def test_empty_train_good(tmp_path, capsys):
    (tmp_path / "d" / "train" / "good").mkdir(parents=True)
    err = one_line_error(fit_patchcore.main, ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "b")], capsys)
    assert "holds no images" in err


def test_missing_train_good(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    err = one_line_error(fit_patchcore.main, ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "b")], capsys)
    assert "train/good" in err


def test_unreadable_image_is_named(texture_data, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(texture_data, data)
    (data / "train" / "good" / "007.png").write_bytes(b"not really a png")
    err = one_line_error(fit_patchcore.main, ["--data", str(data), "--out", str(tmp_path / "b")], capsys)
    assert "007.png" in err and "not an image" in err


def test_three_images_fit_by_cross_fitting(texture_data, tmp_path):
    data = tmp_path / "d"
    (data / "train" / "good").mkdir(parents=True)
    for p in sorted((texture_data / "train" / "good").iterdir())[:3]:
        shutil.copy(p, data / "train" / "good")
    assert run(fit_patchcore.main, ["--data", str(data), "--out", str(tmp_path / "b")]) == 0
    comp = json.loads((tmp_path / "b" / "bundle.json").read_text())["components"]["patchcore"]
    assert comp["calibration"]["method"] == "cross_fit" and comp["calibration"]["n_images"] == 3
    assert len(comp["bank_images"]) == 3  # with so few pictures, every one is in the final bank


def test_no_images(tmp_path, capsys):
    (tmp_path / "d" / "train" / "good").mkdir(parents=True)
    err = one_line_error(fit_patchcore.main, ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "b")], capsys)
    assert "holds no images" in err


def test_evaluate_missing_bundle(texture_data, tmp_path, capsys):
    err = one_line_error(evaluate.main, ["--data", str(texture_data), "--bundle", str(tmp_path / "missing"),
                                         "--json", str(tmp_path / "x.json")], capsys)
    assert "missing" in err


@pytest.mark.parametrize("module", ["training.fit_patchcore", "training.evaluate", "training.benchmark_detector",
                                    "training.dev_sets"])
def test_help_and_exit_code_from_a_real_process(module, tmp_path):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--data" in done.stdout
    done = subprocess.run([sys.executable, "-m", module, "--data", str(tmp_path / "none"), "--out",
                           str(tmp_path / "b"), "--bundle", str(tmp_path / "b"), "--json", str(tmp_path / "j")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_benchmark_detector_fits_every_set_with_the_same_defaults(texture_data, tmp_path):
    """Two sets, one of them non-square (derived strips): one row each with every contract key."""
    from training import benchmark_detector, dev_sets

    strips = dev_sets.derive(texture_data, tmp_path / "derived", "strips")
    out = tmp_path / "bench.json"
    assert run(benchmark_detector.main, ["--data", f"{texture_data},{strips}", "--json", str(out),
                                         "--out", str(tmp_path / "bundles")]) == 0
    result = json.loads(out.read_text())
    assert set(result["datasets"]) == {"weave", "weave_strips"}
    for name, row in result["datasets"].items():
        assert {"image_auroc", "pixel_auroc", "aupro", "f1", "f1_max", "accuracy", "bank_size", "fit_s",
                "ms_per_image"} <= set(row), name
        assert row["f1_max"] >= row["f1"] and 0 < row["bank_size"]
        assert row["image_auroc"] > 0.9, (name, row)
    configs = {json.dumps(json.loads((tmp_path / "bundles" / n / "bundle.json").read_text())["components"]
                          ["patchcore"]["config"], sort_keys=True) for n in ("weave", "weave_strips")}
    assert len(configs) == 1  # nothing per dataset
    strip_map = json.loads((tmp_path / "bundles" / "weave_strips" / "bundle.json").read_text())
    assert strip_map["format_version"] == 2


def test_benchmark_detector_fits_the_plain_patchcore_as_its_baseline(texture_data, tmp_path):
    """`--baseline plain`: the stride-8 and stride-16 stages concatenated raw, every patch in the bank, no border
    factors (the reference the defaults are measured against); `--set` still applies on top of it."""
    from training import benchmark_detector
    from xai.bundle import load, read_meta
    from xai.inspector import Inspector

    out = tmp_path / "plain.json"
    assert run(benchmark_detector.main, ["--data", str(texture_data), "--json", str(out), "--out",
                                         str(tmp_path / "b"), "--baseline", "plain", "--set", "short_side=224"]) == 0
    bundle = load(tmp_path / "b" / "weave")
    stored = read_meta(bundle.path)["components"]["patchcore"]
    config, facts = stored["config"], stored["fit"]
    assert config["layers"] == [2, 4] and config["colour_window"] == 0 and config["short_side"] == 224
    assert facts["bank_size"] == facts["n_patches"]  # no coreset
    patchcore = Inspector(bundle).patchcore
    assert patchcore.layer_scales.tolist() == [1.0, 1.0] and patchcore.border_scale.tolist() == [1.0] * 3
    assert json.loads(out.read_text())["datasets"]["weave"]["image_auroc"] > 0.9


def test_dev_sets_crop_pictures_and_masks_alike(texture_data, tmp_path):
    from PIL import Image

    from training import dev_sets

    for kind in ("strips", "crops"):
        out = dev_sets.derive(texture_data, tmp_path, kind)
        for mask_path in sorted((out / "ground_truth").rglob("*_mask.png")):
            picture = out / "test" / mask_path.parent.name / mask_path.name.replace("_mask", "")
            with Image.open(mask_path) as mask, Image.open(picture) as image:
                assert mask.size == image.size
                assert (np.asarray(mask) > 127).any()  # the defect stayed in the crop
        sizes = {Image.open(p).size for p in (out / "train" / "good").iterdir()}
        if kind == "strips":
            assert all(h == round(w / 0.4) or w == round(0.4 * h) for w, h in sizes)
        else:
            assert len(sizes) > 1  # pictures come in several shapes


def test_fit_with_real_defects_calibrates_on_them(texture_data, tmp_path):
    defects = tmp_path / "defects"
    defects.mkdir()
    for kind in ("scratch", "blob"):
        for path in (texture_data / "test" / kind).iterdir():
            (defects / f"{kind}_{path.name}").write_bytes(path.read_bytes())
    out = tmp_path / "bundle"
    assert run(fit_patchcore.main, ["--data", str(texture_data), "--out", str(out), "--defects", str(defects)]) == 0
    comp = json.loads((out / "bundle.json").read_text())["components"]["patchcore"]
    cal = comp["calibration"]
    assert cal["n_real_defects"] == 4 and "real defective" in comp["threshold_rule"]
    assert cal["real"]["detection_rate"] == 1.0 and cal["false_alarm_rate"] == 0.0  # generated defects separate


def test_new_commands_fail_in_one_line(texture_data, tmp_path, capsys):
    from training import benchmark_detector, dev_sets

    err = one_line_error(dev_sets.main, ["--data", str(texture_data), "--out", str(tmp_path), "--kinds", "bogus"],
                         capsys)
    assert "bogus" in err
    err = one_line_error(benchmark_detector.main, ["--data", str(tmp_path / "nowhere"), "--json",
                                                   str(tmp_path / "b.json")], capsys)
    assert "nowhere" in err


def test_evaluate_breaks_the_figures_down_by_defect_type(texture_bundle, tmp_path):
    """Two named defect types, one visible (a dark blob) and one that changes nothing (its 'defect' pictures are
    good textures with a mask drawn on them): the breakdown keeps them apart instead of averaging them."""
    from PIL import Image

    from synthetic import add_defect, texture

    rng = np.random.default_rng(21)
    root = tmp_path / "typed"
    for folder in ("train/good", "test/good", "test/blob", "test/invisible", "ground_truth/blob",
                   "ground_truth/invisible"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(texture(rng)).save(root / "train" / "good" / "000.png")
    for i in range(4):
        Image.fromarray(texture(rng)).save(root / "test" / "good" / f"{i:03d}.png")
    for kind in ("blob", "invisible"):
        for i in range(3):
            clean = texture(rng)
            image, mask = add_defect(clean, rng, "blob")
            Image.fromarray(image if kind == "blob" else clean).save(root / "test" / kind / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--data", str(root), "--bundle", str(texture_bundle), "--json", str(out),
                               "--no-store"]) == 0
    types = json.loads(out.read_text())["patchcore"]["per_type"]
    assert set(types) == {"blob", "invisible"} and types["blob"]["n"] == types["invisible"]["n"] == 3
    assert types["blob"]["image_auroc"] == 1.0 and types["blob"]["pointing_game"] == 1.0
    assert types["invisible"]["image_auroc"] < types["blob"]["image_auroc"]
    assert types["blob"]["pixel_auroc"] > 0.95 > types["invisible"]["pixel_auroc"]


def test_benchmark_detector_set_overrides_one_default_for_every_set(texture_data, tmp_path, capsys):
    """`--set FIELD=VALUE` is what measures one default's cost: the fitted bundle carries the override, the rows
    carry the per-type breakdown, and a field that does not exist is one clear line."""
    from training import benchmark_detector

    out = tmp_path / "bench.json"
    assert run(benchmark_detector.main, ["--data", str(texture_data), "--json", str(out), "--out",
                                         str(tmp_path / "b"), "--set", "short_side=224", "--set", "layers=2,4"]) == 0
    config = json.loads((tmp_path / "b" / "weave" / "bundle.json").read_text())["components"]["patchcore"]["config"]
    assert config["short_side"] == 224 and config["layers"] == [2, 4]
    row = json.loads(out.read_text())["datasets"]["weave"]
    assert set(row["per_type"]) == {"scratch", "blob"} and row["per_type"]["blob"]["n"] == 2
    assert "| weave | blob | 2 |" in capsys.readouterr().out
    err = one_line_error(benchmark_detector.main, ["--data", str(texture_data), "--json", str(out),
                                                   "--set", "resolution=2"], capsys)
    assert "--set takes FIELD=VALUE" in err and "short_side" in err
    for bad, says in (("sampler=everything", "sampler = 'everything'"), ("border_correction=ture", "true or false")):
        err = one_line_error(benchmark_detector.main, ["--data", str(texture_data), "--json", str(out), "--out",
                                                       str(tmp_path / "refused"), "--set", bad], capsys)
        assert says in err and not (tmp_path / "refused").exists()  # refused before any fit
    config = benchmark_detector.with_overrides(benchmark_detector.PatchCoreConfig(), ["part_scaling=none"])
    assert config.part_scaling == "none"  # the word, not None


def test_a_job_stops_between_two_items_once_cancelled():
    """training.jobs: the bar's loop and its update check the flag of the `stop_when` block they run in, and only
    that block's."""
    import threading

    from training.jobs import Cancelled, check_cancelled, progress, stop_when

    stop, seen = threading.Event(), []
    with pytest.raises(Cancelled), stop_when(stop):
        for step in progress(range(5), "items"):
            seen.append(step)
            if step == 1:
                stop.set()
    assert seen == [0, 1]
    check_cancelled()  # outside the block nothing is cancelled
    with stop_when(stop), progress(None, "batches", total=4) as bar, pytest.raises(Cancelled):
        bar.update(2)
