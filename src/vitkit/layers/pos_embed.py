"""Position embeddings: fixed sinusoids (1-D and 2-D) and resampling of learned ones."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_1d(positions: int | Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim)).

    positions: a count n (for 0..n-1) or a float tensor of positions. Returns (n, dim).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embeddings need an even dim, got {dim}")
    pos = torch.arange(positions, dtype=torch.float32) if isinstance(positions, int) else positions.float()
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = pos[:, None] * inv_freq[None, :]  # (n, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # interleave sin, cos


def sincos_2d(grid_h: int, grid_w: int, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos embedding, laid out exactly as MAE's `get_2d_sincos_pos_embed`.

    The first half of the channels encodes the column (x), the second half the row (y); each half
    is [sin(x·ω), cos(x·ω)] with ω_i = base^(-i / (dim/4)). Returns (grid_h · grid_w, dim) in
    row-major patch order.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                            indexing="ij")  # each (Gh, Gw)
    omega = base ** (-torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # (dim/4,)

    def half(pos: Tensor) -> Tensor:
        angles = pos.flatten()[:, None] * omega[None, :]  # (Gh·Gw, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (Gh·Gw, dim/2)

    return torch.cat([half(xs), half(ys)], dim=1)


def resample_abs_pos_embed(
    posemb: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resize a learned (1, prefix + Gh·Gw, D) position embedding to a new patch grid.

    Prefix tokens ([CLS], distillation, registers) are kept as they are; the grid part is
    interpolated in 2-D. `old_size` defaults to a square grid; pass it for non-square ones.
    """
    n_grid = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(n_grid)
        if side * side != n_grid:
            raise ValueError(f"position embedding has {n_grid} grid tokens, which is not a square; pass old_size")
        old_size = (side, side)
    if old_size[0] * old_size[1] != n_grid:
        raise ValueError(f"old_size {old_size} has {old_size[0] * old_size[1]} positions but the embedding has "
                         f"{n_grid} after {num_prefix_tokens} prefix token(s)")
    if tuple(new_size) == tuple(old_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)  # (1, D, Gh, Gw)
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype)  # (1, Gh'·Gw', D)
    return torch.cat([prefix, grid], dim=1)
