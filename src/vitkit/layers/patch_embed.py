"""Patch embedding: cut the image into P×P patches and project each one linearly.

A convolution with kernel = stride = P is exactly "flatten each patch, then one Linear"
(tests/test_layers.py shows it); the convolution is just the fast way to do it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import ImageSizeError, check_image, nearest_multiple


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def check_built_size(h: int, w: int, img_size: tuple[int, int], patch_size: tuple[int, int] | None = None) -> None:
    """Refuse an h×w image for a model built for img_size that does not resize its position embeddings. With the
    patch size, the img_size suggested is one the patch divides (the nearest to h×w)."""
    if (h, w) != img_size:
        H, W = img_size
        if patch_size is None or (h % patch_size[0] == 0 and w % patch_size[1] == 0):
            other = f"img_size=({h}, {w}), or dynamic_img_size=True to interpolate its position embeddings"
        else:  # no model takes h×w unpadded: img_size=(h, w) would itself be refused
            ph, pw = patch_size
            other = (f"dynamic_img_size=True and dynamic_img_pad=True ({h}×{w} is no multiple of the patch size "
                     f"{ph}×{pw}: it is then padded to {-(-h // ph) * ph}×{-(-w // pw) * pw})")
        raise ImageSizeError(f"model was built for {H}×{W} images but got {h}×{w}; resize the images to {H}×{W}, "
                             f"or create the model with {other}")


def pad_to_multiple(x: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """x: (B, C, H, W) → (B, C, H', W'), zero-padded at the bottom and right up to multiples of patch_size."""
    ph, pw = patch_size
    return F.pad(x, (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph))


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
        if not pad and (self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]):
            (h, w), (ph, pw) = self.img_size, self.patch_size
            raise ImageSizeError(f"img_size {h}×{w} is no multiple of the patch size {ph}×{pw}; build the model with "
                                 f"img_size=({nearest_multiple(h, ph)}, {nearest_multiple(w, pw)}) (the nearest "
                                 f"that is), or with dynamic_img_pad=True to pad images up")
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
            fit_h, fit_w = nearest_multiple(h, ph), nearest_multiple(w, pw)
            raise ImageSizeError(
                f"image is {h}×{w} but patch size {ph}×{pw} does not divide it; resize it to "
                f"{fit_h}×{fit_w} (or another multiple of the patch size), or create the model with "
                f"dynamic_img_pad=True to pad it")
        return h // ph, w // pw

    def check_input(self, x: Tensor) -> None:
        check_image(x, self.in_chans, min_size=0, like=self)  # a batch with our channels; the size is checked below
        h, w = x.shape[-2:]
        if not self.dynamic:
            check_built_size(h, w, self.img_size, None if self.pad else self.patch_size)
        self.grid_for(h, w)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.pad:
            x = pad_to_multiple(x, self.patch_size)
        return self.proj(x).permute(0, 2, 3, 1)  # (B, D, Hp, Wp) → (B, Hp, Wp, D)
