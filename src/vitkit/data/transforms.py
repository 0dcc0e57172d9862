"""Tensor image transforms, no torchvision: resize, crops, flips, normalisation.

Every function takes one image (C, H, W) or a batch (B, C, H, W) and returns the same rank.
Random ones draw independently for each sample of a batch from an optional torch.Generator, so a
seeded generator reproduces them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.patch_embed import to_2tuple

__all__ = ["EvalTransform", "TrainAugment", "center_crop", "normalize", "random_crop", "random_hflip", "resize"]


def _as_batch(x: Tensor, fn: str) -> tuple[Tensor, bool]:
    """(C, H, W) → (1, C, H, W); (B, C, H, W) unchanged. Returns the batch and whether it was one image."""
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn} takes an image (C, H, W) or a batch (B, C, H, W) but got shape {tuple(x.shape)}; "
                         f"add or remove a leading axis")
    return (x[None], True) if x.ndim == 3 else (x, False)


def resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize to size (H, W); an int means square. (…, C, H, W) → (…, C, *size)."""
    xb, single = _as_batch(x, "resize")
    size = to_2tuple(size)
    if tuple(xb.shape[-2:]) != size:
        xb = F.interpolate(xb.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return xb[0] if single else xb


def _check_fits(x: Tensor, size: tuple[int, int], fn: str, hint: str) -> None:
    if size[0] > x.shape[-2] or size[1] > x.shape[-1]:
        raise ValueError(f"{fn}: crop {size[0]}×{size[1]} is larger than the image "
                         f"{x.shape[-2]}×{x.shape[-1]}; {hint}")


def center_crop(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """The central size (H, W) window; odd margins leave the extra pixel at the bottom/right."""
    xb, single = _as_batch(x, "center_crop")
    (h, w), (H, W) = to_2tuple(size), xb.shape[-2:]
    _check_fits(xb, (h, w), "center_crop", "resize the image first")
    top, left = (H - h) // 2, (W - w) // 2
    out = xb[..., top:top + h, left:left + w]
    return out[0] if single else out


def random_crop(x: Tensor, size: int | tuple[int, int], padding: int = 0,
                generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad each side by `padding`, then cut a size (H, W) window at a random offset per sample."""
    xb, single = _as_batch(x, "random_crop")
    (h, w), B = to_2tuple(size), xb.shape[0]
    if padding < 0:
        raise ValueError(f"random_crop: padding must be ≥ 0 but is {padding}")
    if padding:
        xb = F.pad(xb, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    _check_fits(xb, (h, w), "random_crop", "resize the image first or pass a larger padding")
    H, W = xb.shape[-2:]
    top = torch.randint(0, H - h + 1, (B,), generator=generator)   # (B,)
    left = torch.randint(0, W - w + 1, (B,), generator=generator)  # (B,)
    if single:  # one image: a slice, no gather
        t, l = int(top), int(left)
        return xb[0, :, t:t + h, l:l + w].contiguous()
    rows = (top[:, None] + torch.arange(h)).to(xb.device)          # (B, h)
    cols = (left[:, None] + torch.arange(w)).to(xb.device)         # (B, w)
    b = torch.arange(B, device=xb.device)[:, None, None]
    out = xb.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, h, w, C)
    out = out.permute(0, 3, 1, 2).contiguous()                          # (B, C, h, w)
    return out[0] if single else out


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left↔right with probability p, drawn per sample."""
    xb, single = _as_batch(x, "random_hflip")
    flip = torch.rand(xb.shape[0], generator=generator) < p  # (B,)
    out = torch.where(flip.to(xb.device)[:, None, None, None], xb.flip(-1), xb)
    return out[0] if single else out


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean[c]) / std[c] per channel; mean and std have one entry per channel."""
    xb, single = _as_batch(x, "normalize")
    C = xb.shape[1]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"normalize: the images have {C} channel(s) but mean has {len(mean)} and std "
                         f"{len(std)} entries; pass one mean and one std per channel")
    if any(s == 0 for s in std):
        raise ValueError(f"normalize: std {list(std)} contains 0; every std must be non-zero")
    m = torch.as_tensor(mean, dtype=xb.dtype, device=xb.device)[:, None, None]  # (C, 1, 1)
    s = torch.as_tensor(std, dtype=xb.dtype, device=xb.device)[:, None, None]   # (C, 1, 1)
    out = (xb - m) / s
    return out[0] if single else out


def _check_mean_std(mean, std, owner: str) -> None:
    if (mean is None) != (std is None):
        raise ValueError(f"{owner}: mean is {mean} but std is {std}; pass both to normalise, or neither to skip it")


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation: resize to img_size if needed → random crop (zero padding) → hflip → normalize.

    mean/std None skips normalisation. Call on (C, H, W) or (B, C, H, W); returns (…, C, *img_size).
    """
    img_size: int | tuple[int, int]
    crop_padding: int = 0                 # zero padding on each side before the random crop
    hflip_p: float = 0.5                  # probability of a horizontal flip, per sample
    mean: Sequence[float] | None = None   # per-channel mean, or None to skip normalize
    std: Sequence[float] | None = None    # per-channel std

    def __post_init__(self):
        _check_mean_std(self.mean, self.std, type(self).__name__)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = resize(x, self.img_size)
        if self.crop_padding:
            x = random_crop(x, self.img_size, self.crop_padding, generator=generator)
        if self.hflip_p > 0:
            x = random_hflip(x, self.hflip_p, generator=generator)
        return x if self.mean is None else normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation transform: resize to img_size if it differs → normalize (mean/std None skips it)."""
    img_size: int | tuple[int, int] | None = None  # None keeps the input size
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __post_init__(self):
        _check_mean_std(self.mean, self.std, type(self).__name__)

    def __call__(self, x: Tensor) -> Tensor:
        if self.img_size is not None:
            x = resize(x, self.img_size)
        return x if self.mean is None else normalize(x, self.mean, self.std)
