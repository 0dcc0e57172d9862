"""Convolution building blocks shared by the CNN families (ConvNeXt, ResNet) and the hybrid ViT's stem.

    LayerNorm2d     LayerNorm over the channels of a (B, C, H, W) map
    StdConv2d       conv with weight standardisation (BiT), optional TF 'SAME' padding
    MaxPool2dSame   max pooling with TF 'SAME' padding
    GroupNormAct    GroupNorm, then (optionally) ReLU
    ConvNormAct     conv → norm(+act), keys `conv`, `norm`
    ConvMlp         the transformer MLP with 1×1 convolutions, keys `fc1`, `fc2`

Keys and numerics follow timm's layers of the same names, so timm checkpoints load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .patch_embed import to_2tuple


class LayerNorm2d(nn.LayerNorm):
    """x: (B, C, H, W) → (B, C, H, W), each pixel's C channels normalised. eps 1e-6 as timm's."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Total padding TF's 'SAME' adds along one axis of length `size`: the output is ceil(size / stride)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
             value: float = 0.0) -> Tensor:
    """Pad (B, C, H, W) as TF's 'SAME' does: the odd pixel, if any, goes to the bottom / right."""
    ph = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    pw = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


def static_same(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> bool:
    """'SAME' padding is a fixed symmetric padding when the stride is 1 and the kernel reach is odd."""
    return all(s == 1 and (d * (k - 1)) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


def symmetric_padding(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> int:
    """PyTorch-style symmetric padding, (stride − 1 + dilation·(k − 1)) // 2 from the first axis: 'SAME' where
    static_same holds."""
    return ((stride[0] - 1) + dilation[0] * (kernel[0] - 1)) // 2


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output filter before use (Qiao et al.; BiT):

        Ŵ[o] = (W[o] − mean(W[o])) / sqrt(var(W[o]) + eps)

    padding: an int, None (PyTorch-style symmetric 'same'-ish: (stride − 1 + dilation·(k − 1)) // 2),
    or 'same' (TensorFlow's SAME, computed from the input size when it cannot be fixed in advance).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 padding: int | str | None = None, dilation: int = 1, groups: int = 1, bias: bool = False,
                 eps: float = 1e-6):
        k, s, d = to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation)
        dynamic = padding == "same" and not static_same(k, s, d)
        if padding == "same" or padding is None:
            padding = 0 if dynamic else symmetric_padding(k, s, d)
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias)
        self.dynamic_pad = dynamic  # pad from the input size at run time
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        w = self.weight.reshape(self.out_channels, -1)  # (O, I·kh·kw)
        var, mean = torch.var_mean(w, dim=1, unbiased=False, keepdim=True)
        return ((w - mean) * torch.rsqrt(var + self.eps)).reshape_as(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class MaxPool2dSame(nn.Module):
    """Max pooling with TensorFlow's 'SAME' padding (padded with −∞, so the padding never wins)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = to_2tuple(kernel_size), to_2tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm over (B, C, H, W), then ReLU when `act`. Keys `weight`, `bias` (timm's GroupNormAct)."""

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, act: bool = True):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm with {num_groups} groups needs a channel count divisible by "
                             f"{num_groups}, got {num_channels}; change the width or the number of groups")
        super().__init__(num_groups, num_channels, eps=eps)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class ConvNormAct(nn.Module):
    """conv → norm (the norm may carry the activation, as GroupNormAct does). Keys `conv`, `norm`."""

    def __init__(self, conv: nn.Module, norm: nn.Module):
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class ConvMlp(nn.Module):
    """x: (B, C, H, W) → (B, C_out, H, W): 1×1 conv → GELU → dropout → 1×1 conv → dropout.

    The same map as layers.Mlp applied at every pixel, with the weights shaped as convolutions (keys `fc1`,
    `fc2`, as timm's Mlp(use_conv=True)).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=1)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, out_features, kernel_size=1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
