"""Checks every model makes on what it is given, with errors that say what to do.

    ImageSizeError   an image whose size or channel count the model cannot take
    check_image      a (B, C, H, W) batch with the model's channel count (and a minimum size)
    take_indices     which blocks / stages forward_intermediates should return
"""
from __future__ import annotations

from torch import Tensor


class ImageSizeError(ValueError):
    """An input image whose size or channel count the model cannot take."""


def check_image(x: Tensor, in_chans: int, min_size: int = 1) -> None:
    """Refuse, with a message that says what to do, anything but a (B, in_chans, H, W) batch with H, W ≥ min_size."""
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


def take_indices(n: int, indices: list[int] | None, what: str = "stages", prefix: str | None = None) -> set[int]:
    """The set of feature indices 0..n-1 that `indices` names (negative counts from the end; None: all).

    what: what the model has n of, for the error ("stages", "blocks"); prefix: the word before "indices" in the
    error ("stage", "block"), `what` when not given.
    """
    bad = [i for i in indices or () if not -n <= i < n]
    if bad:
        raise IndexError(f"{prefix or what} indices {bad} are out of range for a model with {n} {what}; "
                         f"use 0..{n - 1}, or -{n}..-1 to count from the end")
    return set(range(n)) if indices is None else {i % n for i in indices}
