"""Learned relative position bias (Swin, BEiT, CoAtNet): one learned score per head for every 2-D offset.

Inside a Wh×Ww window a query at (y, x) and a key at (y', x') differ by (Δy, Δx), with
Δy ∈ [-(Wh-1), Wh-1] and Δx ∈ [-(Ww-1), Ww-1]: (2Wh-1)(2Ww-1) distinct offsets. A table holds one
learned score per offset and head; an index buffer says which row of the table each (query, key)
pair reads. The gathered (heads, N, N) bias is added to the attention scores (`attend(bias=...)`).

    relative_position_index(window, class_token=False)  → LongTensor (N, N), N = Wh·Ww (+1)
    num_relative_distances(window, class_token=False)   → rows of the table: (2Wh-1)(2Ww-1) (+3)
    gather_bias(table (D, heads), index (N, N))         → bias (heads, N, N)
    add_relative_position_bias(module, window, num_heads, class_token=False)
        registers the table and the index on an existing module, under timm's flat names
    RelativePositionBias(window, num_heads, class_token=False)
        a module holding them; forward() → bias (heads, N, N)

State-dict names are timm's: the parameter `relative_position_bias_table` of shape (D, heads) and
the buffer `relative_position_index`, which timm registers as NON-persistent (it is rebuilt from the
window size, never saved), so neither timm's state dicts nor ours contain it. Keys therefore are
`<module>.relative_position_bias_table` only:
    Swin     layers.0.blocks.0.attn.relative_position_bias_table    (add_relative_position_bias on the attention)
    BEiT     blocks.0.attn.relative_position_bias_table             (class_token=True, on the attention)
             rel_pos_bias.relative_position_bias_table              (the shared variant: RelativePositionBias)
    CoAtNet  stages.N.blocks.M.attn.rel_pos.relative_position_bias_table  (a RelativePositionBias child named rel_pos)

The table starts at zero here; the model's init_weights decides its initial values (Swin and
CoAtNet: truncated normal, std 0.02; BEiT: zeros).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .patch_embed import to_2tuple


def num_relative_distances(window: int | tuple[int, int], class_token: bool = False) -> int:
    """Rows of the bias table: (2Wh-1)(2Ww-1) offsets, plus BEiT's 3 [CLS] entries when class_token."""
    wh, ww = to_2tuple(window)
    return (2 * wh - 1) * (2 * ww - 1) + (3 if class_token else 0)


def relative_position_index(window: int | tuple[int, int], class_token: bool = False,
                            device: torch.device | None = None) -> Tensor:
    """LongTensor (N, N): for query i and key j of a row-major Wh×Ww window, the table row of their offset.

    The offset (Δy, Δx) = (yi - yj, xi - xj) maps to (Δy + Wh - 1)·(2Ww - 1) + (Δx + Ww - 1), as in
    Swin's release. With class_token (BEiT), a [CLS] token is put first (N = Wh·Ww + 1) and reads three
    extra rows after the D = (2Wh-1)(2Ww-1) offsets: [CLS]→token D, token→[CLS] D+1, [CLS]→[CLS] D+2.
    """
    wh, ww = to_2tuple(window)
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)  # (N, N), in [0, D)
    if not class_token:
        return index
    d = num_relative_distances((wh, ww))
    full = torch.empty(wh * ww + 1, wh * ww + 1, dtype=torch.long, device=device)
    full[1:, 1:] = index
    full[0, :] = d        # [CLS] query → any key
    full[:, 0] = d + 1    # token query → [CLS] key
    full[0, 0] = d + 2    # [CLS] → [CLS]
    return full


def gather_bias(table: Tensor, index: Tensor) -> Tensor:
    """table (D, heads), index (N, N) → bias (heads, N, N)."""
    n_q, n_k = index.shape
    return table[index.reshape(-1)].reshape(n_q, n_k, -1).permute(2, 0, 1)  # (N·N, H) → (H, N, N)


def add_relative_position_bias(module: nn.Module, window: int | tuple[int, int], num_heads: int,
                               class_token: bool = False) -> None:
    """Give `module` timm's flat names: parameter `relative_position_bias_table` (D, heads), zeros, and
    non-persistent buffer `relative_position_index` (N, N). Read the bias with
    `gather_bias(module.relative_position_bias_table, module.relative_position_index)`.

    For attention modules whose checkpoints keep the table next to qkv (Swin's and BEiT's `attn`);
    elsewhere use the RelativePositionBias module.
    """
    module.relative_position_bias_table = nn.Parameter(
        torch.zeros(num_relative_distances(window, class_token), num_heads))
    module.register_buffer("relative_position_index", relative_position_index(window, class_token),
                           persistent=False)


class RelativePositionBias(nn.Module):
    """A learned relative position bias for a Wh×Ww window (plus a leading [CLS] token when class_token).

    forward() → (heads, N, N), N = Wh·Ww (+1), to pass as `attend(..., bias=...)`.
    Keys: `relative_position_bias_table` (D, heads); the index buffer is not saved (as timm).
    """

    def __init__(self, window: int | tuple[int, int], num_heads: int, class_token: bool = False):
        super().__init__()
        self.window_size = to_2tuple(window)
        self.class_token = class_token
        add_relative_position_bias(self, self.window_size, num_heads, class_token)

    def forward(self) -> Tensor:
        return gather_bias(self.relative_position_bias_table, self.relative_position_index)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, class_token={self.class_token}"
