"""Patch embedding: cut the image into P×P patches and project each one linearly.

A convolution with kernel = stride = P is exactly "flatten each patch, then one Linear"
(tests/test_layers.py shows it); the convolution is just the fast way to do it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class ImageSizeError(ValueError):
    """An input image whose size or channel count the model cannot take."""


class PatchEmbed(nn.Module):
    """(B, C, H, W) → (B, H/P, W/P, D). Keys `proj.weight`, `proj.bias` as timm's.

    img_size: the size the model is built for; other sizes are refused unless `dynamic`.
    dynamic: accept any size (the model then resamples its position embeddings).
    pad: zero-pad the bottom/right edge up to a multiple of P instead of refusing.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, bias: bool = True, dynamic: bool = False, pad: bool = False):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.dynamic = dynamic
        self.pad = pad
        self.grid_size = self.grid_for(*self.img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid an h×w image gives, or a clear error when P does not divide it."""
        ph, pw = self.patch_size
        if self.pad:
            return -(-h // ph), -(-w // pw)
        if h % ph or w % pw:
            fit_h, fit_w = max(ph, h // ph * ph), max(pw, w // pw * pw)
            raise ImageSizeError(
                f"image is {h}×{w} but patch size {ph}×{pw} does not divide it; resize it to "
                f"{fit_h}×{fit_w} (or another multiple of the patch size), or create the model with "
                f"dynamic_img_pad=True to pad it")
        return h // ph, w // pw

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ImageSizeError(f"expected a batch of images shaped (B, C, H, W) but got shape {tuple(x.shape)}; "
                                 f"add a batch dimension with x.unsqueeze(0) for a single image")
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ImageSizeError(
                f"model expects {self.in_chans}-channel images but got {c} channel(s); convert the images "
                f"({'to RGB' if self.in_chans == 3 else f'to {self.in_chans} channel(s)'}) or create the model "
                f"with in_chans={c}")
        if not self.dynamic and (h, w) != self.img_size:
            H, W = self.img_size
            raise ImageSizeError(
                f"model was built for {H}×{W} images but got {h}×{w}; resize the images to {H}×{W}, or create "
                f"the model with img_size=({h}, {w}) or dynamic_img_size=True to interpolate its position embeddings")
        self.grid_for(h, w)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.pad:
            ph, pw = self.patch_size
            x = F.pad(x, (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph))
        return self.proj(x).permute(0, 2, 3, 1)  # (B, D, Hp, Wp) → (B, Hp, Wp, D)
