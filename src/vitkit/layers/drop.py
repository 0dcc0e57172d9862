"""Stochastic depth (DropPath): drop a whole residual branch per sample during training."""
from __future__ import annotations

from torch import Tensor, nn


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero the branch for a random fraction p of the samples and rescale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(total: float, depth: int) -> list[float]:
    """The usual linear schedule: 0 for the first block up to `total` for the last."""
    return [total * i / (depth - 1) for i in range(depth)] if depth > 1 else [float(total)] * depth
