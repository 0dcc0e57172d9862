"""MBConv, EfficientNet's inverted bottleneck, pre-norm as CoAtNet and MaxViT use it:

    x' = shortcut(x) + DropPath(1×1 expand → depthwise k×k → squeeze-excite → 1×1 project)

and the small pieces it is made of: BatchNorm + activation, squeeze-excitation, 2×2 average-pool
downsampling, and convs/pools with TensorFlow's 'SAME' padding (ported TF weights expect the extra
pixel at the bottom/right). State-dict keys follow timm's (`conv1_1x1`, `norm1`, `se.fc1`, ...).
"""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .conv import pad_same, static_same, symmetric_padding
from .drop import DropPath
from .patch_embed import to_2tuple

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),  # TF's default GELU
}


def act_layer(name: str):
    """An activation class by name: 'relu', 'silu', 'gelu' or 'gelu_tanh'."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never losing more than 10% (as timm)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


# ---- TensorFlow 'SAME' padding ------------------------------------------------------------------------
class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow 'SAME' padding computed from the input size (strided convs)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride))


def conv2d(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False,
           padding: str = "") -> nn.Conv2d:
    """A k×k conv. padding '' pads symmetrically (PyTorch); 'same' pads as TensorFlow, which is
    symmetric too except for strided convs, whose padding depends on the input size."""
    if padding not in ("", "same"):
        raise ValueError(f"padding must be '' or 'same', got {padding!r}")
    k, s = to_2tuple(kernel), to_2tuple(stride)
    if padding == "same" and not static_same(k, s):
        return SameConv2d(in_chs, out_chs, kernel, stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=symmetric_padding(k, s), groups=groups, bias=bias)


class AvgPool2x2(nn.Module):
    """2×2 average pooling with stride 2: (B, C, H, W) → (B, C, H/2, W/2). With 'same' padding an odd
    size is zero-padded at the bottom/right (the zeros count in the mean, as in TF); otherwise it is floored."""

    def __init__(self, padding: str = ""):
        super().__init__()
        self.same = padding == "same"

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(pad_same(x, (2, 2), (2, 2)) if self.same else x, 2, 2)


class Downsample2d(nn.Module):
    """Halve the size with a 2×2 average pool, then widen with a 1×1 conv if the width changes.
    Keys `expand.weight`, `expand.bias` as timm's."""

    def __init__(self, dim: int, dim_out: int, bias: bool = True, padding: str = ""):
        super().__init__()
        self.pool = AvgPool2x2(padding)
        self.expand = nn.Conv2d(dim, dim_out, 1, bias=bias) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.pool(x))


# ---- norm + activation, squeeze-excitation --------------------------------------------------------------
class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation. A subclass, so its keys are BatchNorm's own (timm's layout)."""

    def __init__(self, num_features: int, eps: float = 1e-5, act: str | None = "relu"):
        super().__init__(num_features, eps=eps)
        self.act = act_layer(act)() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class SqueezeExcite(nn.Module):
    """x · σ(fc2(act(fc1(mean over H, W of x)))): a per-channel gate from the global context.
    x: (B, C, H, W); fc1, fc2 are 1×1 convs through `rd_channels`. Keys as timm's SEModule."""

    def __init__(self, channels: int, rd_channels: int, act: str = "relu"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer(act)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.fc2(self.act(self.fc1(s))).sigmoid()


# ---- the block ---------------------------------------------------------------------------------------------
class MbConv(nn.Module):
    """Pre-norm inverted bottleneck: (B, C_in, H, W) → (B, C_out, H/s, W/s).

        shortcut(x) + DropPath(conv3_1x1(SE(norm2(conv2_kxk(norm1(conv1_1x1(down(pre_norm(x)))))))))

    The expanded width is `expand_ratio` × the output width (`expand_output`, MaxViT) or the input
    width (timm's rw CoAtNets). The depthwise k×k conv carries the stride ('dw'), or a 2×2 average
    pool does before everything ('pool'). The shortcut of a strided block is Downsample2d.
    se_early: apply SE straight after the depthwise conv, before norm2 (some timm weights).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, expand_ratio: float = 4.0,
                 expand_output: bool = True, kernel_size: int = 3, stride_mode: str = "dw",
                 pre_norm_act: bool = False, output_bias: bool = True, se_ratio: float = 0.25,
                 se_early: bool = False, se_act: str = "silu", act: str = "gelu", norm_eps: float = 1e-5,
                 padding: str = "", drop_path: float = 0.0):
        super().__init__()
        if stride_mode not in ("dw", "pool"):
            raise ValueError(f"stride_mode must be 'dw' or 'pool', got {stride_mode!r}")
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"an MBConv that keeps the size keeps the width too; got {in_chs} → {out_chs} with stride 1")
        mid_chs = make_divisible((out_chs if expand_output else in_chs) * expand_ratio)
        rd_chs = int(se_ratio * (out_chs if expand_output else mid_chs))
        norm_act = partial(BatchNormAct2d, eps=norm_eps, act=act)
        pooled = stride > 1 and stride_mode == "pool"

        self.shortcut = Downsample2d(in_chs, out_chs, bias=output_bias, padding=padding) if stride > 1 else nn.Identity()
        self.pre_norm = BatchNormAct2d(in_chs, eps=norm_eps, act=act if pre_norm_act else None)
        self.down = Downsample2d(in_chs, in_chs, padding=padding) if pooled else nn.Identity()
        self.conv1_1x1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm1 = norm_act(mid_chs)
        self.conv2_kxk = conv2d(mid_chs, mid_chs, kernel_size, stride=1 if pooled else stride, groups=mid_chs,
                                padding=padding)
        self.se_early = SqueezeExcite(mid_chs, rd_chs, se_act) if se_early else None
        self.norm2 = norm_act(mid_chs)
        self.se = None if se_early else SqueezeExcite(mid_chs, rd_chs, se_act)
        self.conv3_1x1 = nn.Conv2d(mid_chs, out_chs, 1, bias=output_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        x = self.conv1_1x1(self.down(self.pre_norm(x)))        # expand: (B, mid, H/s, W/s)
        x = self.conv2_kxk(self.norm1(x))                      # depthwise k×k
        if self.se_early is not None:
            x = self.se_early(x)
        x = self.norm2(x)
        if self.se is not None:
            x = self.se(x)
        return self.drop_path(self.conv3_1x1(x)) + shortcut   # project: (B, C_out, H/s, W/s)
