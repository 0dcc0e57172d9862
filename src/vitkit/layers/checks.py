"""Checks every model makes on what it is given, with errors that say what to do.

    ImageSizeError   an image whose size or channel count the model cannot take
    check_image      a (B, C, H, W) float batch with the model's channel count, dtype (and a minimum size)
    nearest_multiple the size to suggest when a patch or stride must divide it
    take_indices     which blocks / stages forward_intermediates should return
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import VitkitError


class ImageSizeError(VitkitError):
    """An input image whose size, channel count or number type the model cannot take."""


def check_image(x: Tensor, in_chans: int, min_size: int = 1, like: nn.Module | None = None) -> None:
    """Refuse, with a message that says what to do, anything but a (B, in_chans, H, W) float batch with
    H, W ≥ min_size, of the dtype of `like`'s parameters (any float dtype under autocast)."""
    check_dtype(x, like)
    if x.ndim != 4:
        raise ImageSizeError(f"expected a batch of images shaped (B, C, H, W) but got shape {tuple(x.shape)}; "
                             f"add a batch dimension with x.unsqueeze(0) for a single image")
    c = x.shape[1]
    if c != in_chans:
        raise ImageSizeError(
            f"model expects {in_chans}-channel images but got {c} channel(s); convert the images "
            f"({'to RGB' if in_chans == 3 else f'to {in_chans} channel(s)'}) or create the model with in_chans={c}")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ImageSizeError(f"model needs images of at least {min_size}×{min_size} but got {h}×{w}; "
                             f"resize (upsample) the images to {max(h, min_size)}×{max(w, min_size)} or more")


def check_dtype(x: Tensor, like: nn.Module | None = None) -> None:
    """Refuse integer images, and float images of another dtype than the model's weights outside autocast,
    before PyTorch's "Input type (c10::Half) and bias type (float) should be the same"."""
    if not x.is_floating_point():
        raise ImageSizeError(f"images are {_name(x.dtype)} (integers) but the model takes floats; convert them, "
                             f"e.g. x.float() / 255 for 0–255 pixels, then normalise them as the model expects")
    weight = next(like.parameters(), None) if like is not None else None
    if weight is None or x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise ImageSizeError(f"images are {_name(x.dtype)} but the model's weights are {_name(weight.dtype)}; convert "
                         f"the images (x.to(torch.{_name(weight.dtype)})) or the model "
                         f"(model.to(torch.{_name(x.dtype)})), or run it under torch.autocast")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def nearest_multiple(n: int, step: int) -> int:
    """The multiple of `step` nearest to n (the larger one on a tie), at least `step`: the size to suggest when
    `step` must divide it (60 with patch 16 → 64, not 48)."""
    return max(step, (n + step // 2) // step * step)


def take_indices(n: int, indices: int | list[int] | None, what: str = "stages", prefix: str | None = None) -> set[int]:
    """The set of feature indices 0..n-1 that `indices` names: a list (negative counts from the end), an int k
    for the last k (as timm), None for all.

    what: what the model has n of, for the error ("stages", "blocks"); prefix: the word before "indices" in the
    error ("stage", "block"), `what` when not given.
    """
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= n:
            raise IndexError(f"indices={indices} asks for the last {indices} {what} of a model with {n}; use 1..{n}, "
                             f"or a list of {prefix or what} indices")
        return set(range(n - indices, n))
    bad = [i for i in indices or () if not -n <= i < n]
    if bad:
        raise IndexError(f"{prefix or what} indices {bad} are out of range for a model with {n} {what}; "
                         f"use 0..{n - 1}, or -{n}..-1 to count from the end")
    return set(range(n)) if indices is None else {i % n for i in indices}
