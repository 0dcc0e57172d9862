"""The transformer feed-forward network: Linear → GELU → Dropout → Linear → Dropout."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Mlp(nn.Module):
    """x: (..., D) → (..., D_out). Keys `fc1`, `fc2` as timm's.

    When no gradient is needed (inference), a GELU activation runs in place on fc1's output: the hidden
    tensor is the largest in the block (4·D per token), and a second one costs an allocation and a pass
    over memory. Same numbers either way.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # (..., hidden)
        if type(self.act) is nn.GELU and not h.requires_grad:
            h = torch._C._nn.gelu_(h, approximate=self.act.approximate)
        else:
            h = self.act(h)
        return self.drop2(self.fc2(self.drop1(h)))
