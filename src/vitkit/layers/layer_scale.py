"""LayerScale (CaiT): a learned per-channel gain on a residual branch, initialised small."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """x: (..., D) → x · γ, γ initialised to `init_values`. Key `gamma` as timm's."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
