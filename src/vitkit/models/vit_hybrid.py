"""Hybrid ViT (Dosovitskiy et al., 2021, §3.1): a ResNet's feature map, not raw pixels, is cut into patches.

    image (B, C, H, W)
      → ResNetV2 (BiT convs)                          (B, C_r, H/32, W/32)   R26: 4 stages, stride 32
      → 1×1 conv projection (P = 1: a token per map pixel)   (B, Hp, Wp, D)
      → the Vision Transformer from there on: [CLS], position embeddings, blocks, norm, head

Everything after the patch embedding is vitkit's VisionTransformer; this file only swaps its patch embedding
for HybridEmbed. Keys follow timm's: patch_embed.backbone.stem.conv.weight, patch_embed.proj.weight, blocks.0...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from ..layers import ImageSizeError, to_2tuple
from ..layers.checks import check_image
from ..layers.patch_embed import check_built_size, pad_to_multiple
from ..registry import HALF, ModelEntry, register
from .resnetv2 import ResNetV2
from .vit import VIT_SIZES, VisionTransformer, ViTConfig


class HybridEmbed(nn.Module):
    """(B, C, H, W) → backbone map (B, C_r, h, w) → P×P conv, stride P → (B, h/P, w/P, D).

    Keys `backbone.*` and `proj.weight`, `proj.bias` as timm's HybridEmbed.
    dynamic: accept any image size (the ViT then resamples its position embeddings).
    pad: zero-pad the backbone's map up to a multiple of P instead of refusing.
    """

    def __init__(self, backbone: ResNetV2, img_size: int | tuple[int, int] = 224, patch_size: int = 1,
                 in_chans: int = 3, embed_dim: int = 768, dynamic: bool = False, pad: bool = False):
        super().__init__()
        self.backbone = backbone
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.dynamic = dynamic
        self.pad = pad
        self.reduction = backbone.reduction * self.patch_size[0]  # image pixels per token side
        self.grid_size = self.grid_for(*backbone.feature_size(*self.img_size))
        self.proj = nn.Conv2d(backbone.num_features, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        """The token grid an h×w backbone map gives, or a clear error when P does not divide it."""
        ph, pw = self.patch_size
        if self.pad:
            return -(-h // ph), -(-w // pw)
        if h % ph or w % pw:
            raise ImageSizeError(f"the backbone's {h}×{w} feature map is not divisible by patch size {ph}×{pw}; "
                                 f"resize the image, or create the model with dynamic_img_pad=True to pad it")
        return h // ph, w // pw

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.in_chans, like=self)
        if not self.dynamic:
            check_built_size(*x.shape[-2:], self.img_size)
        x = self.backbone(x)  # (B, C_r, h, w)
        self.grid_for(*x.shape[-2:])
        if self.pad:
            x = pad_to_multiple(x, self.patch_size)
        return self.proj(x).permute(0, 2, 3, 1)  # (B, D, Hp, Wp) → (B, Hp, Wp, D)


@dataclass(frozen=True)
class HybridViTConfig(ViTConfig):
    patch_size: int = 1                                         # P, on the backbone's map: 1 = a token per map pixel
    backbone_layers: tuple[int, ...] = (2, 2, 2, 2)             # ResNetV2 bottlenecks per stage (R26; R50: 3, 4, 9)
    backbone_channels: tuple[int, ...] = (256, 512, 1024, 2048)  # ResNetV2 output width per stage
    backbone_stem: int = 64                                     # channels of the backbone's 7×7 stem conv
    backbone_groups: int = 32                                   # GroupNorm groups in the backbone


class HybridVisionTransformer(VisionTransformer):
    """A VisionTransformer whose patch embedding is HybridEmbed over a ResNetV2."""

    def __init__(self, cfg: HybridViTConfig):
        super().__init__(cfg)
        # the tokens' stride in image pixels is the backbone's reduction times P, not P
        for info in self.feature_info:
            info["reduction"] = self.patch_embed.reduction

    def _make_patch_embed(self, cfg: HybridViTConfig) -> nn.Module:
        backbone = ResNetV2(cfg.in_chans, cfg.backbone_layers, cfg.backbone_channels, cfg.backbone_stem,
                            cfg.backbone_groups)
        return HybridEmbed(backbone, cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
                           dynamic=cfg.dynamic_img_size, pad=cfg.dynamic_img_pad)

    def init_weights(self) -> None:
        """The ViT part as VisionTransformer.init_weights says (the 1×1 projection: LeCun normal, zero bias); the
        backbone as ResNetV2.init_weights says (convs He normal, GroupNorms unit gain and zero bias)."""
        super().init_weights()
        self.patch_embed.backbone.init_weights()


# ---- variants ---------------------------------------------------------------------------------------
# name: (ViT size from VIT_SIZES, backbone bottlenecks per stage, input size). R26 = 2 + 3·(2+2+2+2) layers.
HYBRID_SIZES = {
    "vit_small_r26_s32_224": ("small", (2, 2, 2, 2), 224),
}


def hybrid_config(name: str, **overrides) -> HybridViTConfig:
    """The config of a registered hybrid name, e.g. 'vit_small_r26_s32_224': R26 backbone (stride 32), then
    ViT-S on its map with P = 1, for 224×224 input."""
    size, layers, img = HYBRID_SIZES[name]
    width, depth, heads, mlp = VIT_SIZES[size]
    base = HybridViTConfig(img_size=img, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width,
                           backbone_layers=layers)
    return dataclasses.replace(base, **overrides)


# Smoke-test size: 4-group GroupNorms so the backbone can be 16–32 channels wide, a 2×2 token grid.
_TINY = dict(img_size=64, embed_dim=48, depth=2, num_heads=6, backbone_layers=(1, 1, 1, 1),
             backbone_channels=(16, 32, 32, 32), backbone_stem=16, backbone_groups=4)

for _name in HYBRID_SIZES:
    register(ModelEntry(_name, "vit_hybrid", hybrid_config(_name), HybridVisionTransformer, mean=HALF, std=HALF,
                        tiny=_TINY))
