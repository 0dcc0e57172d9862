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

import sys
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class LoadedModel:
    model: nn.Module      # eval mode
    record: dict          # classes (or None), mean, std, img_size [H, W], in_chans, crop_pct, and the training split
    origin: str           # where the weights come from, for the user
    random_weights: bool  # built from a registered name: its outputs mean nothing


def load_model(source: str, img_size: int | None = None, *, warn: bool = True) -> LoadedModel:
    """A vitkit checkpoint file, or a registered model name built with random weights (a warning says so).
    The one way `vitkit export`, `predict`, `eval` and `explain` get a model."""
    from .layers.patch_embed import to_2tuple
    from .registry import create_model, get_entry, model_config
    from .weights import load_checkpoint

    path = Path(source)
    if path.exists() or path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        if path.suffix.lower() == ".onnx":
            raise ValueError(f"{source} is an ONNX export; this command needs the PyTorch model, so pass the vitkit "
                             f"checkpoint it was exported from")
        ckpt = load_checkpoint(path)  # a clear error for a missing, corrupt or non-vitkit file
        cfg = model_config(ckpt.model_name, **ckpt.overrides)
        trained = list(to_2tuple(ckpt.data.get("img_size") or cfg.img_size))
        if img_size is not None and list(to_2tuple(img_size)) != trained:
            raise ValueError(f"{source} was trained at {trained[0]}×{trained[1]}; --img-size {img_size} would need "
                             f"resampled position embeddings: leave --img-size out to use the trained size")
        entry = get_entry(ckpt.model_name)
        record = {"mean": list(entry.mean), "std": list(entry.std), "in_chans": cfg.in_chans, **ckpt.data,
                  "img_size": trained, "classes": ckpt.classes or None}
        return LoadedModel(ckpt.build_model(), record, f"{ckpt.model_name} from {source}", False)
    overrides = {} if img_size is None else {"img_size": img_size}
    cfg = model_config(source, **overrides)  # an unknown name → KeyError with close matches
    entry = get_entry(source)
    if warn:
        print(f"vitkit: warning: {source} is a model name, not a checkpoint: it has random weights, so its outputs "
              f"mean nothing. Pass a checkpoint for a trained model.", file=sys.stderr)
    record = {"classes": None, "mean": list(entry.mean), "std": list(entry.std),
              "img_size": list(to_2tuple(cfg.img_size)), "in_chans": cfg.in_chans}
    return LoadedModel(create_model(source, **overrides).eval(), record,
                       f"{source} with RANDOM weights (a model name, not a checkpoint)", True)


def load_images(paths: list[str], record: dict, normalise: bool = True) -> Tensor:
    """Image files → (B, C, H, W) as the model was evaluated in training: converted to its channels, resized
    (short side to img_size / crop_pct, aspect kept), centre-cropped, then normalised."""
    from .data import load_image
    from .train.image_data import eval_transform

    transform = eval_transform(record, normalise)
    return torch.stack([transform(load_image(p, in_chans=record["in_chans"])) for p in paths])


@torch.no_grad()
def classify_images(model, record: dict, paths: list[str], top_k: int = 5, bf16: bool = False) -> list[dict]:
    """The top-k classes with probabilities for each image file: [{"image", "top": [{"label", "prob"}, ...]}].
    A PyTorch model runs a few images at a time (micro_batch_size); anything else is called on the batch."""
    x = load_images(paths, record)
    if isinstance(model, nn.Module):
        size = tuple(record["img_size"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = predict_logits(model, x, micro_batch_size(model, size, len(x), in_chans=record["in_chans"]))
    elif bf16:
        raise ValueError("--bf16 runs a PyTorch checkpoint under autocast; an .onnx file runs in fp32")
    else:
        logits = model(x)
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    classes = record.get("classes") or [str(i) for i in range(probs.shape[1])]
    return [{"image": str(p), "top": [{"label": classes[i], "prob": round(float(v), 6)}
                                      for v, i in zip(vals.tolist(), idx.tolist())]}
            for p, vals, idx in zip(paths, top.values, top.indices)]


__all__ = ["BUDGET_BYTES", "LoadedModel", "classify_images", "largest_activation_bytes", "load_images", "load_model",
           "micro_batch_size", "predict_logits"]
