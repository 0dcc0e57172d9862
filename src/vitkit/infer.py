"""Inference in micro-batches: the logits of one big batch, computed a few images at a time.

    n = micro_batch_size(model, img_size=224)     # images per micro-batch: the largest activation stays ≤ 16 MiB
    logits = predict_logits(model, images, micro_batch=n)

Why it is faster on a CPU: a big batch makes big intermediate tensors (ViT-S/16 at batch 32: a 39 MB MLP hidden
tensor per block; ResNet-50: 100 MB feature maps). glibc's malloc serves a block over its mmap threshold (at most
32 MiB) from fresh kernel pages unless a free chunk of its heap fits, and returns such blocks on free, so every
such tensor pays page faults when first written, and it fits no cache. Cut into micro-batches whose largest tensor
stays under a budget, the same heap memory is reused from one layer to the next, warm in cache. Each image's logits
are computed the same way either way (models in eval mode treat images independently), so they agree to float
rounding.

On CUDA the GPU wants the biggest batch it can hold, so `micro_batch_size` returns the whole batch there.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .models._common import eval_mode

BUDGET_BYTES = 16 * 2 ** 20  # the largest activation a micro-batch may make (see the module docstring)


def _tensors(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def largest_activation_bytes(model: nn.Module, img_size: int | tuple[int, int], in_chans: int | None = None,
                             device: torch.device | str | None = None) -> int:
    """Bytes of the largest tensor any submodule outputs for ONE image (a probe forward in eval mode)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    c = in_chans or getattr(getattr(model, "cfg", None), "in_chans", 3)
    param = next(model.parameters(), None)
    device = device or (param.device if param is not None else "cpu")
    largest = 0

    def hook(module, args, out):
        nonlocal largest
        for t in _tensors(out):
            largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with eval_mode(model), torch.inference_mode():
            model(torch.zeros(1, c, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return largest


def micro_batch_size(model: nn.Module, img_size: int | tuple[int, int], batch: int | None = None, *,
                     in_chans: int | None = None, device: torch.device | str | None = None,
                     budget_bytes: int = BUDGET_BYTES) -> int:
    """Images per micro-batch on a CPU: as many as keep the largest activation within `budget_bytes` (at least 1).
    Given the `batch`, the split is balanced: 32 images at a cap of 13 go as 11 + 11 + 10, not 13 + 13 + 6.
    On CUDA: `batch` (or 0 when not given), meaning no split."""
    param = next(model.parameters(), None)
    device = torch.device(device or (param.device if param is not None else "cpu"))
    if device.type != "cpu":
        return batch or 0
    per_image = largest_activation_bytes(model, img_size, in_chans, device)
    cap = max(1, budget_bytes // max(1, per_image))
    if not batch:
        return cap
    chunks = -(-batch // cap)
    return -(-batch // chunks)


def predict_logits(model: nn.Module, images: Tensor, micro_batch: int | None = None) -> Tensor:
    """images (B, C, H, W) → logits (B, K), in eval mode without autograd, `micro_batch` images at a time
    (None or 0: all at once)."""
    if images.shape[0] == 0:
        raise ValueError("no images to predict: the batch is empty")
    if micro_batch is not None and micro_batch < 0:
        raise ValueError(f"micro_batch must be a positive number of images (or 0 for all at once), got {micro_batch}")
    step = micro_batch or images.shape[0]
    with eval_mode(model), torch.inference_mode():
        return torch.cat([model(chunk) for chunk in images.split(step)])


__all__ = ["BUDGET_BYTES", "largest_activation_bytes", "micro_batch_size", "predict_logits"]
