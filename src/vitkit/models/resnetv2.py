"""ResNetV2 with BiT's conv layers (Kolesnikov et al., 2020), as the hybrid ViT's feature extractor.

    image (B, C, H, W)
      → stem: 7×7 StdConv stride 2, GroupNorm + ReLU, 3×3 max-pool stride 2      (B, stem, H/4, W/4)
      → stages of bottleneck blocks, stride 2 from the second stage on
        block: ReLU(shortcut + GN(conv1×1(GN·ReLU(conv3×3(GN·ReLU(conv1×1(x)))))))
        the first block of every stage projects its shortcut: 1×1 StdConv (+ stride) and GroupNorm
      → the last stage's map (B, channels[-1], H/2^(n+1), W/2^(n+1))

This is the form the ViT paper's hybrids use (timm's ResNetV2 with preact=False, stem_type='same'): the norm
follows each conv (not pre-activation), every conv standardises its weights, and convs and pooling pad as
TensorFlow's 'SAME' does, so a stride-2 layer maps a side of n pixels to ceil(n / 2). It has no head; the
hybrid ViT projects its map to tokens. Keys follow timm's: stem.conv, stem.norm, stages.0.blocks.0.conv1, ...
"""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

from ..layers.conv import ConvNormAct, GroupNormAct, MaxPool2dSame, StdConv2d

WS_EPS = 1e-8  # weight-standardisation epsilon of the ViT hybrids' StdConv2dSame


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a width to the nearest multiple of `divisor` (at least `divisor`), never going below 90% of it."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(in_chs, out_chs, kernel_size, stride=stride, padding="same", eps=WS_EPS)


class Bottleneck(nn.Module):
    """Post-norm bottleneck: 1×1 reduce → 3×3 (stride here) → 1×1 expand, GroupNorm after each.

    Keys `downsample.conv`/`downsample.norm` (first block of a stage), `conv1..3`, `norm1..3` as timm's.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, num_groups: int = 32, project: bool = False,
                 bottle_ratio: float = 0.25):
        super().__init__()
        mid = make_divisible(out_chs * bottle_ratio)
        self.downsample = (ConvNormAct(_conv(in_chs, out_chs, 1, stride), GroupNormAct(out_chs, num_groups, act=False))
                           if project else None)
        self.conv1 = _conv(in_chs, mid, 1)
        self.norm1 = GroupNormAct(mid, num_groups)
        self.conv2 = _conv(mid, mid, 3, stride)
        self.norm2 = GroupNormAct(mid, num_groups)
        self.conv3 = _conv(mid, out_chs, 1)
        self.norm3 = GroupNormAct(out_chs, num_groups, act=False)
        self.act3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNetStage(nn.Module):
    """`depth` bottlenecks; the first one strides and projects its shortcut. Key `blocks`."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, num_groups: int):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, num_groups, project=i == 0)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """(B, C, H, W) → (B, channels[-1], ceil(H / reduction), ceil(W / reduction)), reduction = 2^(1 + stages).

    layers: bottlenecks per stage (R26: 2, 2, 2, 2; R50: 3, 4, 9). num_groups: GroupNorm groups, which must
    divide every width.
    """

    def __init__(self, in_chans: int = 3, layers: tuple[int, ...] = (2, 2, 2, 2),
                 channels: tuple[int, ...] = (256, 512, 1024, 2048), stem_chs: int = 64, num_groups: int = 32):
        super().__init__()
        if len(layers) > len(channels):
            raise ValueError(f"{len(layers)} stages of layers {layers} need as many widths; got channels {channels}")
        self.stem = nn.Sequential(OrderedDict([
            ("conv", _conv(in_chans, stem_chs, 7, stride=2)),
            ("norm", GroupNormAct(stem_chs, num_groups)),
            ("pool", MaxPool2dSame(3, stride=2)),
        ]))
        stages, prev = [], stem_chs
        for i, (depth, out) in enumerate(zip(layers, channels)):
            stages.append(ResNetStage(prev, out, 1 if i == 0 else 2, depth, num_groups))
            prev = out
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.num_stride2 = 2 + len(layers) - 1  # stem conv, stem pool, and every stage after the first
        self.reduction = 2 ** self.num_stride2
        self.init_weights()

    def init_weights(self) -> None:
        """Convs: He normal (fan-out, for ReLU); standardisation makes their scale irrelevant anyway. GroupNorms:
        unit gain, zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_size(self, h: int, w: int) -> tuple[int, int]:
        """The map size an h×w image gives: 'SAME' padding makes every stride-2 layer take n to ceil(n / 2)."""
        for _ in range(self.num_stride2):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, channels[-1], h, w)."""
        return self.stages(self.stem(x))
