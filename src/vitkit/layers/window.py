"""Window attention plumbing (Swin): cut a feature map into windows, shift it, mask the wrap-around.

    window_partition(x (B, H, W, C), window)            → (B·nW, wh·ww, C)   token sequences, one per window
    window_reverse(windows (B·nW, wh·ww, C), window, H, W) → (B, H, W, C)
    cyclic_shift(x (B, H, W, C), shift)                 → (B, H, W, C)  rolled up/left by shift;
                                                           cyclic_shift(x, -shift) undoes it
    shifted_window_mask(H, W, window, shift)            → bool (nW, N, N), True = may attend
    window_attention_to_image(weights (B·nW, heads, N, N), grid, window, shift) → (B, heads, H·W, H·W)

Windows are numbered row-major over the grid (nW = H/wh · W/ww) and batch-major: window k of image b
is row b·nW + k. Tokens inside a window are row-major too (N = wh·ww). `window` and `shift` take an
int or an (h, w) pair.

Shifted windows (Swin, §3.2): rolling the map up/left by `shift` before partitioning makes the new
windows straddle the old window borders. The bottom/right windows then hold tokens that came from
the opposite edge of the image; `shifted_window_mask` keeps those apart, so attention never crosses
the wrap-around seam.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .patch_embed import to_2tuple


def window_partition(x: Tensor, window: int | tuple[int, int]) -> Tensor:
    """x: (B, H, W, C) → (B·nW, wh·ww, C); wh must divide H and ww divide W."""
    wh, ww = to_2tuple(window)
    B, H, W, C = x.shape
    if H % wh or W % ww:
        raise ValueError(f"a {H}×{W} feature map cannot be cut into {wh}×{ww} windows; "
                         f"the window must divide both sides")
    x = x.reshape(B, H // wh, wh, W // ww, ww, C)  # (B, nH, wh, nW_w, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)  # (B·nH·nW_w, wh·ww, C)


def window_reverse(windows: Tensor, window: int | tuple[int, int], H: int, W: int) -> Tensor:
    """windows: (B·nW, wh·ww, C) → (B, H, W, C); the inverse of window_partition."""
    wh, ww = to_2tuple(window)
    C = windows.shape[-1]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, C)  # (B, nH, nW_w, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def cyclic_shift(x: Tensor, shift: int | tuple[int, int]) -> Tensor:
    """x: (B, H, W, C) rolled up by sh rows and left by sw columns: out[:, i, j] = x[:, (i+sh) % H, (j+sw) % W].

    cyclic_shift(cyclic_shift(x, s), -s) is x.
    """
    sh, sw = to_2tuple(shift)
    return torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))


def shifted_window_mask(H: int, W: int, window: int | tuple[int, int], shift: int | tuple[int, int],
                        device: torch.device | None = None) -> Tensor:
    """Boolean (nW, N, N) attention mask for the windows of a map rolled by `shift`: True = may attend.

    After cyclic_shift, row i of the rolled map holds original row (i + sh) mod H, so rows i ≥ H - sh
    wrapped around from the top (likewise columns). Two tokens of one window may attend to each other
    only when both wrapped, or both did not, in rows and in columns: they were neighbours in the image.
    """
    wh, ww = to_2tuple(window)
    sh, sw = to_2tuple(shift)
    rows = torch.arange(H, device=device) >= H - sh if sh else torch.zeros(H, dtype=torch.bool, device=device)
    cols = torch.arange(W, device=device) >= W - sw if sw else torch.zeros(W, dtype=torch.bool, device=device)
    region = rows[:, None].long() * 2 + cols[None, :].long()  # (H, W): which of the 4 seams' sides
    region = window_partition(region[None, :, :, None], (wh, ww))[..., 0]  # (nW, N)
    return region[:, :, None] == region[:, None, :]  # (nW, N, N)


def window_positions(grid: tuple[int, int], window: int | tuple[int, int],
                     shift: int | tuple[int, int] = 0, device: torch.device | None = None) -> Tensor:
    """LongTensor (nW, N): the row-major image position (0..H·W-1) of each token of each window."""
    H, W = grid
    flat = torch.arange(H * W, device=device).reshape(1, H, W, 1)
    return window_partition(cyclic_shift(flat, shift), window)[..., 0]  # (nW, N)


def window_attention_to_image(weights: Tensor, grid: tuple[int, int], window: int | tuple[int, int],
                              shift: int | tuple[int, int] = 0) -> Tensor:
    """Window attention as dense image attention: (B·nW, heads, N, N) → (B, heads, H·W, H·W).

    Entry [b, h, p, q] is how much the token at image position p (row-major on the H×W grid) attends to
    the token at position q. It is zero where q is outside p's window; the shift is undone, so p and q
    are positions in the image as it was before cyclic_shift.
    """
    H, W = grid
    pos = window_positions(grid, window, shift, device=weights.device)  # (nW, N)
    nW, N = pos.shape
    heads = weights.shape[1]
    B = weights.shape[0] // nW
    w = weights.reshape(B, nW, heads, N, N).transpose(1, 2)  # (B, heads, nW, N, N)
    out = weights.new_zeros(B, heads, H * W, H * W)
    out[:, :, pos[:, :, None], pos[:, None, :]] = w  # query rows × key columns of each window
    return out
