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

import glob
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
    notes: list[str] = field(default_factory=list)  # what was fitted on loading (a resized position table, ...)


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz")


def load_model(source: str, img_size: int | None = None, *, name: str | None = None, trust_pickle: bool = False,
               warn: bool = True) -> LoadedModel:
    """The one way `vitkit export`, `predict`, `eval` and `explain` get a model. `source` is anything
    `vitkit.load_pretrained` reads (a vitkit checkpoint, a Hugging Face folder, a JAX .npz, a torchvision or timm
    state dict; the last two with `name`), or a registered model name, built with random weights (a warning
    says so unless warn=False)."""
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"{source} is an ONNX export; this command needs the PyTorch model, so pass the checkpoint "
                         f"it was exported from")
    if path.exists() or looks_like_path(source):
        from .weights import is_vitkit_checkpoint
        if path.is_file() and is_vitkit_checkpoint(path):
            return _from_vitkit(path, img_size)
        return _from_pretrained(path, name, img_size, trust_pickle)
    return _from_name(str(source), img_size, warn)


def looks_like_path(source: str | os.PathLike) -> bool:
    """Whether `source` names a file or folder (a weights suffix or a path separator) rather than a model name."""
    text = str(source)
    return Path(text).suffix.lower() in WEIGHT_SUFFIXES + (".onnx",) or "/" in text or os.sep in text


def _from_vitkit(path: Path, img_size: int | None) -> LoadedModel:
    from .layers.patch_embed import to_2tuple
    from .registry import get_entry, model_config
    from .weights import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)  # a clear error for a missing, corrupt or non-vitkit file
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        what = f"no {e.args[0]!r} record" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path} says it is a vitkit checkpoint but its header is incomplete ({what}); it was "
                              f"not written by vitkit's save_checkpoint, or was edited since: write it again with "
                              f"`vitkit train` or `vitkit convert`") from e
    cfg = model_config(ckpt.model_name, **ckpt.overrides)
    trained = list(to_2tuple(ckpt.data.get("img_size") or cfg.img_size))
    if img_size is not None and list(to_2tuple(img_size)) != trained:
        raise ValueError(f"{path} was trained at {trained[0]}×{trained[1]}; --img-size {img_size} would need "
                         f"resampled position embeddings: leave --img-size out to use the trained size")
    entry = get_entry(ckpt.model_name)
    record = {"mean": list(entry.mean), "std": list(entry.std), "in_chans": cfg.in_chans, **ckpt.data,
              "img_size": trained, "classes": ckpt.classes or None}
    from .models._backbone import backbone_weights, is_pretraining
    if is_pretraining(ckpt.model_name):  # an MAE or DINO run: its backbone ViT (MAE's encoder, DINO's teacher)
        from .weights.converted import Converted
        from .weights.pretrained import fit_pretrained
        backbone = backbone_weights(Converted(ckpt.model_name, ckpt.state, dict(ckpt.overrides), None, "vitkit"))
        return LoadedModel(fit_pretrained(backbone)[0], record,
                           f"{backbone.model_name} (the backbone of {ckpt.model_name}) from {path}", False)
    return LoadedModel(ckpt.build_model(), record, f"{ckpt.model_name} from {path}", False)


def _from_pretrained(path: Path, name: str | None, img_size: int | None, trust_pickle: bool) -> LoadedModel:
    """A Hugging Face folder, JAX .npz, torchvision or timm state dict, read as load_pretrained reads it."""
    from .layers.patch_embed import to_2tuple
    from .registry import get_entry
    from .weights.pretrained import fit_pretrained, read_any

    converted = read_any(path, name, trust_pickle=trust_pickle)
    model, notes = fit_pretrained(converted, **({} if img_size is None else {"img_size": img_size}))
    cfg, entry = model.cfg, get_entry(converted.model_name)
    mean, std, crop_pct = _preprocessing(path, cfg.in_chans, entry)
    record = {"classes": converted.classes or None, "mean": mean, "std": std, "crop_pct": crop_pct,
              "img_size": list(to_2tuple(cfg.img_size)), "in_chans": cfg.in_chans}
    return LoadedModel(model, record, f"{converted.model_name} from {path} ({converted.source})", False, notes)


def _preprocessing(path: Path, in_chans: int, entry) -> tuple[list[float], list[float], float]:
    """(mean, std, crop_pct): a Hugging Face folder's preprocessor_config.json where it has them, else the
    registered model's normalisation (0.5 per channel if it does not fit in_chans) and no crop."""
    mean, std, crop_pct = list(entry.mean), list(entry.std), 1.0
    config = path / "preprocessor_config.json" if path.is_dir() else None
    if config is not None and config.is_file():
        try:
            pre = json.loads(config.read_text())
        except (OSError, ValueError):
            pre = {}
        if isinstance(pre, dict):
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
            crop = pre.get("crop_pct")
            crop_pct = float(crop) if isinstance(crop, (int, float)) and 0 < crop <= 1 else 1.0
    if len(mean) != in_chans or len(std) != in_chans:
        mean, std = [0.5] * in_chans, [0.5] * in_chans
    return [float(m) for m in mean], [float(s) for s in std], crop_pct


def _from_name(source: str, img_size: int | None, warn: bool) -> LoadedModel:
    from .layers.patch_embed import to_2tuple
    from .registry import create_model, get_entry, model_config

    overrides = {} if img_size is None else {"img_size": img_size}
    try:
        cfg = model_config(source, **overrides)
    except KeyError as e:  # an unknown name: close matches, and that it is no file either
        raise KeyError(f"{e.args[0]} (and there is no file or folder named {source!r})") from None
    entry = get_entry(source)
    if warn:
        print(f"vitkit: warning: {source} is a model name, not a checkpoint: it has random weights, so its outputs "
              f"mean nothing. Pass a checkpoint for a trained model.", file=sys.stderr)
    record = {"classes": None, "mean": list(entry.mean), "std": list(entry.std),
              "img_size": list(to_2tuple(cfg.img_size)), "in_chans": cfg.in_chans}
    return LoadedModel(create_model(source, **overrides).eval(), record,
                       f"{source} with RANDOM weights (a model name, not a checkpoint)", True)


def image_paths(args: list[str]) -> list[Path]:
    """The image files that command-line arguments name: files as given, folders (every image below them, sorted,
    hidden ones skipped) and globs ('photos/*.jpg', 'photos/**/*.png'). A clear error for one that names none."""
    from .data.datasets import IMAGE_EXTENSIONS

    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise FileNotFoundError(f"folder {arg} holds no images ({' '.join(IMAGE_EXTENSIONS)}); pass image "
                                        f"files or a folder of them")
            out.extend(found)
        elif any(c in arg for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no file matches {arg!r}; check the pattern (quote it so that vitkit, not "
                                        f"the shell, expands it)")
            out.extend(found)
        else:
            raise FileNotFoundError(f"image {arg} does not exist; check the path (a folder of images or a glob "
                                    f"such as 'photos/*.jpg' works too)")
    return out


def load_images(paths: list[str] | list[Path], record: dict, normalise: bool = True) -> Tensor:
    """Image files → (B, C, H, W) as the model was evaluated in training: converted to its channels, resized
    (short side to img_size / crop_pct, aspect kept), centre-cropped, then normalised."""
    from .data import load_image
    from .train.image_data import eval_transform

    transform = eval_transform(record, normalise)
    return torch.stack([transform(load_image(p, in_chans=record["in_chans"])) for p in paths])


# ---------------------------------------------------------------------------------------------
# bf16 on the CPU
# ---------------------------------------------------------------------------------------------

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the units that run bf16 matmuls fast


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_runs_bf16_fast() -> bool | None:
    """Whether the CPU has AMX or AVX-512 BF16 (bf16 autocast is then several times faster than fp32; without
    them it was 6× slower); None where the flags cannot be read."""
    flags = cpu_flags()
    return None if flags is None else any(f in flags for f in BF16_CPU_FLAGS)


def resolve_bf16(bf16: bool) -> bool:
    """bf16 autocast on the CPU where asked for and fast; where the CPU lacks AMX and AVX-512 BF16, a warning and
    fp32 instead (which is faster there)."""
    if bf16 and cpu_runs_bf16_fast() is False:
        print("vitkit: warning: this CPU has neither AMX nor AVX-512 BF16 (no amx_bf16 or avx512_bf16 in "
              "/proc/cpuinfo), where bf16 autocast runs several times slower than fp32; running in fp32 instead",
              file=sys.stderr)
        return False
    return bf16


# ---------------------------------------------------------------------------------------------
# Classifying image files
# ---------------------------------------------------------------------------------------------

def iter_classify(model, record: dict, paths: list[str] | list[Path], top_k: int = 5, bf16: bool = False,
                  batch_size: int = 64) -> Iterator[dict]:
    """The top-k classes with probabilities for each image file, in order: {"image", "top": [{"label", "prob"}]}.
    Images are read `batch_size` at a time, so any number of files takes the memory of one batch. A PyTorch model
    runs a few images at a time (micro_batch_size); anything else (an OnnxClassifier) is called on the batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if bf16 and not isinstance(model, nn.Module):
        raise ValueError("--bf16 runs a PyTorch checkpoint under autocast; an .onnx file runs in fp32")
    classes = record.get("classes")
    micro = None
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        x = load_images(chunk, record)
        if isinstance(model, nn.Module):
            if micro is None:
                micro = micro_batch_size(model, tuple(record["img_size"]), batch_size, in_chans=record["in_chans"])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = predict_logits(model, x, micro)
        else:
            logits = model(x)
        probs = logits.float().softmax(dim=-1)
        if classes is not None and len(classes) != probs.shape[1]:
            raise ValueError(f"the model gives {probs.shape[1]} scores but its record names {len(classes)} classes; "
                             f"the checkpoint's class list does not belong to its head: write it again")
        finite = probs.isfinite().all(dim=1).tolist()
        top = probs.nan_to_num(-1.0).topk(min(top_k, probs.shape[1]), dim=-1)
        names = classes or [str(i) for i in range(probs.shape[1])]
        for p, ok, vals, idx in zip(chunk, finite, top.values.tolist(), top.indices.tolist()):
            if not ok:  # the images before it have been given; this one has no answer
                why = "bf16 overflowed (try without --bf16) or " if bf16 else ""
                raise FloatingPointError(f"the model gives non-finite scores (NaN or inf) for {p}: {why}its weights "
                                         f"or its input are broken; check the checkpoint with `vitkit eval`")
            yield {"image": str(p), "top": [{"label": names[i], "prob": round(v, 6)} for v, i in zip(vals, idx)]}


def classify_images(model, record: dict, paths: list[str] | list[Path], top_k: int = 5, bf16: bool = False,
                    batch_size: int = 64) -> list[dict]:
    """`iter_classify` as a list."""
    return list(iter_classify(model, record, paths, top_k, bf16, batch_size))


__all__ = ["BF16_CPU_FLAGS", "BUDGET_BYTES", "LoadedModel", "classify_images", "cpu_flags", "cpu_runs_bf16_fast",
           "image_paths", "iter_classify", "largest_activation_bytes", "load_images", "load_model", "looks_like_path",
           "micro_batch_size", "predict_logits", "resolve_bf16"]
