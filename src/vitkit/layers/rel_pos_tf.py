"""MaxViT's relative position bias, in the layout of its TensorFlow release.

Inside a Wh×Ww window of N = Wh·Ww tokens each head learns one scalar per 2-D offset between a query
and a key, (2Wh-1)(2Ww-1) in all, and adds it to that pair's score: `attend(..., bias=rel_pos())`.
The idea is layers/rel_pos.py's (Swin), laid out differently: the table is (heads, 2Wh-1, 2Ww-1)
and is indexed by key − query, where Swin's is ((2Wh-1)(2Ww-1), heads) indexed by query − key.
The index tensors are non-persistent buffers: state dicts hold only `relative_position_bias_table`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .patch_embed import to_2tuple


def _window_offsets(window_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(dy, dx), each (N, N): the row and column of key k minus those of query q, in [-(W-1), W-1]."""
    wh, ww = window_size
    rows = torch.arange(wh).repeat_interleave(ww)  # (N,) row of token n = r·Ww + c
    cols = torch.arange(ww).repeat(wh)             # (N,) its column
    return rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]


class RelPosBiasTf(nn.Module):
    """bias[h, q, k] = table[h, row(k) − row(q) + Wh − 1, col(k) − col(q) + Ww − 1]   → (H, N, N)."""

    def __init__(self, window_size: int | tuple[int, int], num_heads: int):
        super().__init__()
        self.window_size = wh, ww = to_2tuple(window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, 2 * wh - 1, 2 * ww - 1))
        dy, dx = _window_offsets(self.window_size)
        self.register_buffer("row_index", dy + wh - 1, persistent=False)  # (N, N)
        self.register_buffer("col_index", dx + ww - 1, persistent=False)  # (N, N)

    def forward(self) -> Tensor:
        return self.relative_position_bias_table[:, self.row_index, self.col_index]  # (H, N, N)
