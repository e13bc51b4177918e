"""Command lines: fit + evaluate end to end on generated data, and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from training import evaluate, fit_patchcore
from training.cli import run


def test_evaluate_writes_the_contract_json_and_stores_metrics(texture_data, texture_bundle, tmp_path):
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


def test_too_few_images(texture_data, tmp_path, capsys):
    data = tmp_path / "d"
    (data / "train" / "good").mkdir(parents=True)
    for p in sorted((texture_data / "train" / "good").iterdir())[:3]:
        shutil.copy(p, data / "train" / "good")
    err = one_line_error(fit_patchcore.main, ["--data", str(data), "--out", str(tmp_path / "b")], capsys)
    assert "at least 5" in err


def test_evaluate_missing_bundle(texture_data, tmp_path, capsys):
    err = one_line_error(evaluate.main, ["--data", str(texture_data), "--bundle", str(tmp_path / "missing"),
                                         "--json", str(tmp_path / "x.json")], capsys)
    assert "missing" in err


@pytest.mark.parametrize("module", ["training.fit_patchcore", "training.evaluate"])
def test_help_and_exit_code_from_a_real_process(module, tmp_path):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--data" in done.stdout
    done = subprocess.run([sys.executable, "-m", module, "--data", str(tmp_path / "none"), "--out",
                           str(tmp_path / "b"), "--bundle", str(tmp_path / "b"), "--json", str(tmp_path / "j")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
