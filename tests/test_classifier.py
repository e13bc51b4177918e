"""Classifier heads: training beats chance on an easy generated task; bundles round-trip; evaluate reports them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthetic import add_defect, texture, write_imagefolder
from training import evaluate, train_classifier
from training.cli import run
from xai.bundle import load, load_head, read_meta
from xai.heads import HeadConfig, ViTHead, create_head
from xai.inspector import Inspector


def test_heads_learn_the_easy_task(classifier_bundle, binary_folder, tmp_path):
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--layout", "imagefolder", "--data", str(binary_folder), "--bundle",
                               str(classifier_bundle), "--json", str(out), "--no-store"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"n_images", "patchcore", "classifier_cnn", "classifier_vit"}
    assert result["n_images"] == 10  # 20 % of 2 x 24, stratified: 5 + 5
    for component in ("classifier_cnn", "classifier_vit"):
        metrics = result[component]
        assert {"image_auroc", "f1", "accuracy", "ms_per_image"} <= set(metrics)
        assert metrics["image_auroc"] > 0.8, (component, metrics)  # chance is 0.5


def test_inspector_verdict_uses_the_cnn_head_on_labelled_data(classifier_bundle):
    inspector = Inspector(load(classifier_bundle))
    assert inspector.decision == "classifier_cnn"
    rng = np.random.default_rng(11)
    defect = inspector.detect(add_defect(texture(rng), rng, "blob")[0])
    good = inspector.detect(texture(rng))
    assert set(defect.scores) == {"patchcore", "classifier_cnn", "classifier_vit"}
    assert defect.scores["classifier_cnn"] > good.scores["classifier_cnn"]
    assert defect.label == "blob" and defect.is_defect and good.label == "good" and not good.is_defect
    probs = defect.class_probabilities["classifier_vit"]
    assert set(probs) == {"good", "blob"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert json.dumps(defect.to_json())


def test_heads_reload_bit_exactly(classifier_bundle):
    bundle = load(classifier_bundle)
    x = torch.randn(2, 112, 14, 14)
    for component in ("classifier_cnn", "classifier_vit"):
        a, b = load_head(bundle, component), load_head(bundle, component)
        assert torch.equal(a(x), b(x))
        assert read_meta(bundle.path)["components"][component]["training"]["best_epoch"] >= 1
    assert (classifier_bundle / "split.json").is_file()


def test_vit_attention_is_retrievable_for_every_block():
    head = ViTHead(HeadConfig("vit", 2, grid=7, depth=3))
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0])) for m in head.attention_modules()]
    head.eval()(torch.randn(1, 112, 7, 7))
    for h in hooks:
        h.remove()
    assert len(seen) == 3 and seen[0].shape == (1, 3, 50, 50)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(1, 3, 50))


def test_cnn_head_starts_from_imagenet_weights():
    from xai.backbone import create_imagenet_model

    model = create_imagenet_model()
    head = create_head(HeadConfig("cnn", 2), model)
    assert torch.equal(head.conv_head.weight, model.conv_head.weight)
    assert head.conv_head.weight.data_ptr() != model.conv_head.weight.data_ptr()  # a copy, fine-tuned apart


def test_multiclass_imagefolder_trains_and_reports_macro_f1(tmp_path):
    data = write_imagefolder(tmp_path / "multi", per_class=16)
    bundle = tmp_path / "bundle"
    assert run(train_classifier.main, ["--layout", "imagefolder", "--data", str(data), "--out", str(bundle),
                                       "--arch", "cnn", "--epochs", "5", "--batch-size", "8"]) == 0
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--layout", "imagefolder", "--data", str(data), "--bundle", str(bundle),
                               "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["classifier_cnn"]
    assert {"macro_f1", "accuracy", "image_auroc", "f1"} <= set(metrics)
    assert metrics["macro_f1"] > 0.34  # chance for three balanced classes is ~0.33
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["labels"] == ["good", "blob", "scratch"] and "patchcore" not in meta["components"]


def test_one_class_training_on_mvtec_layout(texture_data, tmp_path):
    bundle = tmp_path / "b"
    assert run(train_classifier.main, ["--data", str(texture_data), "--out", str(bundle), "--arch", "vit",
                                       "--epochs", "2", "--views", "2"]) == 0
    comp = json.loads((bundle / "bundle.json").read_text())["components"]["classifier_vit"]
    assert comp["threshold"] == 0.5 and comp["training"]["train_examples"] == 2 * 13
