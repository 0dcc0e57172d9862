"""LayerScale (CaiT): a learned per-channel gain γ on a residual branch, initialised small.

One mechanism, two ways to hold it. Where a model's checkpoint keys name the gain on the block itself
(timm's BEiT and CaiT `gamma_1`/`gamma_2`, ConvNeXt's `gamma`), the block creates it with
`layer_scale_gain` and applies it with `layer_scale`; elsewhere the `LayerScale` module (key `gamma`)
wraps the same two.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def layer_scale_gain(dim: int, init_values: float | None) -> nn.Parameter | None:
    """γ: (dim,) filled with init_values, or None for no LayerScale."""
    return None if init_values is None else nn.Parameter(torch.full((dim,), float(init_values)))


def layer_scale(x: Tensor, gamma: Tensor | None, channel_dim: int = -1) -> Tensor:
    """x · γ along channel_dim: −1 for tokens (…, D), 1 for maps (B, C, H, W). x itself when γ is None."""
    if gamma is None:
        return x
    if channel_dim in (-1, x.ndim - 1):
        return x * gamma
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    return x * gamma.view(shape)


class LayerScale(nn.Module):
    """x: (..., D) → x · γ, γ initialised to `init_values`. Key `gamma` as timm's."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = layer_scale_gain(dim, init_values)

    def forward(self, x: Tensor) -> Tensor:
        return layer_scale(x, self.gamma)
