"""Classification heads on the shared trunk's stride-16 features: a CNN head and a ViT-style head.

Both take the frozen trunk's stage-4 output (112 x 14 x 14 at 224 px) and return class logits; for binary
data class 1 is "defect". The CNN head fine-tunes the trunk's last stages (ImageNet-initialised), so
GradCAM has a real last conv; the ViT head runs transformer blocks with a CLS token over the 14 x 14
tokens, with timm's fused attention off so attention rollout can read every attention matrix.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

HEAD_INPUT_STAGE = 4  # trunk stage whose output feeds both heads (stride 16)


@dataclass
class HeadConfig:
    """Architecture of a head (stored in bundle.json, so a bundle rebuilds it without code changes)."""

    arch: str  # "cnn" or "vit"
    n_classes: int
    in_channels: int = 112
    trunk: str = "efficientnet_lite0"
    dropout: float = 0.2
    # ViT only
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 2.0
    grid: int = 14

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        return cls(**data)


class CNNHead(nn.Module):
    """The trunk's stride-32 stages and 1x1 head conv (fine-tuned copies), global pooling and a linear layer."""

    def __init__(self, config: HeadConfig, imagenet_model: nn.Module | None = None):
        super().__init__()
        self.config = config
        if imagenet_model is None:
            import timm

            from xai.backbone import TRUNKS

            imagenet_model = timm.create_model(TRUNKS[config.trunk].timm_name, pretrained=False)
        self.stages = copy.deepcopy(imagenet_model.blocks[HEAD_INPUT_STAGE + 1:])
        self.conv_head = copy.deepcopy(imagenet_model.conv_head)
        self.bn2 = copy.deepcopy(imagenet_model.bn2)  # BatchNormAct2d: BN + ReLU6
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.conv_head.out_channels, config.n_classes)

    @property
    def target_layer(self) -> nn.Module:
        """The last conv block (activations 1280 x 7 x 7): GradCAM's layer."""
        return self.bn2

    def activations(self, features: torch.Tensor) -> torch.Tensor:
        """The last conv block's output [B, 1280, h, w]: what the class maps (CAM, Score-CAM, GradCAM) weigh."""
        return self.bn2(self.conv_head(self.stages(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.activations(features)).flatten(1)))

    def reinitialise(self) -> None:
        """Random weights as EfficientNet initialises them (timm's TF-style He init, zero biases); on a
        BN-folded copy this equals a fresh model whose batch norms are the identity."""
        from timm.models.efficientnet import efficientnet_init_weights

        efficientnet_init_weights(self)


class ViTHead(nn.Module):
    """Linear patch projection + CLS token + learned positions + timm transformer blocks + linear classifier."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.config = config
        self.proj = nn.Conv2d(config.in_channels, config.dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + config.grid * config.grid, config.dim) * 0.02)
        self.blocks = nn.Sequential(*[
            Block(config.dim, config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, proj_drop=0.1, attn_drop=0.0)
            for _ in range(config.depth)
        ])
        for block in self.blocks:
            block.attn.fused_attn = False  # explicit softmax, so attn_drop sees the attention probabilities
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.n_classes)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj(features).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"ViT head was built for a {self.config.grid}x{self.config.grid} token grid; "
                             f"got {x.shape[1] - 1} tokens")
        return x + self.pos_embed

    def attention_modules(self) -> list[nn.Module]:
        """One module per block whose forward input is that block's attention probabilities [B, heads, T, T]."""
        return [block.attn.attn_drop for block in self.blocks]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.tokens(features)))
        return self.classifier(self.dropout(x[:, 0]))

    def reinitialise(self) -> None:
        """Random weights as timm initialises a ViT: truncated normal 0.02 for linear layers, zero biases, unit
        norms; the token projection as PyTorch constructs a conv."""
        from timm.models.vision_transformer import init_weights_vit_timm

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, module in self.named_modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # as constructed: the 1x1 projection and the norms (timm leaves these)
            init_weights_vit_timm(module, name)


def create_head(config: HeadConfig, imagenet_model: nn.Module | None = None) -> nn.Module:
    """Registry: build the head named by `config.arch`."""
    if config.arch == "cnn":
        return CNNHead(config, imagenet_model)
    if config.arch == "vit":
        return ViTHead(config)
    raise ValueError(f"unknown head architecture {config.arch!r}: use cnn or vit")
