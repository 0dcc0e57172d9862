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

import math

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


def _geometric_positions(src: int, dst: int) -> Tensor:
    """Where the `src` table rows sit when stretched to cover `dst` offsets: spacing grows geometrically away
    from 0 (UniLM's BEiT fine-tuning recipe, which timm follows), so near offsets keep their resolution."""
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:  # solve 1 + q + … + q^(src//2 - 1) = dst // 2 for q by bisection
        q = (lo + hi) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            hi = q
        else:
            lo = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return torch.tensor([-d for d in reversed(dis)] + [0.0] + dis)


def _interp_1d(z: Tensor, xs: Tensor, targets: Tensor, dim: int) -> Tensor:
    """Piecewise-linear interpolation of z along `dim` from sample points xs to targets (clamped at the ends)."""
    idx = torch.searchsorted(xs, targets.clamp(xs[0], xs[-1]), right=True).clamp(1, len(xs) - 1)
    x0, x1 = xs[idx - 1], xs[idx]
    w = ((targets.clamp(xs[0], xs[-1]) - x0) / (x1 - x0))
    shape = [1] * z.ndim
    shape[dim] = -1
    a, b = z.index_select(dim, idx - 1), z.index_select(dim, idx)
    return a + (b - a) * w.view(shape)


def resize_rel_pos_table(table: Tensor, new_window: int | tuple[int, int], old_window=None,
                         num_extra: int = 0) -> Tensor:
    """Resize a flat relative-position table (L, heads) — Swin's, BEiT's (num_extra=3 trailing [CLS] rows) —
    for a new window. The (2Wh-1)×(2Ww-1) offset grid is resampled per head: old offsets are placed on a
    geometric progression and read off by (bi)linear interpolation at the new integer offsets, as timm's
    `resize_rel_pos_bias_table` does by default. The extra rows are kept. Returns (L', heads)."""
    nh, nw = (new_window, new_window) if isinstance(new_window, int) else new_window
    dst = (2 * nh - 1, 2 * nw - 1)
    if old_window is None:
        side = math.isqrt(table.shape[0] - num_extra)
        src = (side, side)
    else:
        oh, ow = (old_window, old_window) if isinstance(old_window, int) else old_window
        src = (2 * oh - 1, 2 * ow - 1)
    if src[0] * src[1] != table.shape[0] - num_extra:
        raise ValueError(f"a table of {table.shape[0]} rows with {num_extra} extra does not fit a {src[0]}×{src[1]} "
                         f"offset grid; pass old_window")
    if src == dst:
        return table
    grid, extra = table[: table.shape[0] - num_extra], table[table.shape[0] - num_extra:]
    z = grid.float().T.reshape(-1, src[0], src[1])  # (heads, 2Wh-1, 2Ww-1)
    ty, tx = (torch.arange(-(d // 2), d // 2 + 0.1, 1.0) for d in dst)
    z = _interp_1d(z, _geometric_positions(src[0], dst[0]), ty, dim=1)
    z = _interp_1d(z, _geometric_positions(src[1], dst[1]), tx, dim=2)  # (heads, dst_h, dst_w)
    return torch.cat([z.reshape(z.shape[0], -1).T.to(table.dtype), extra])
