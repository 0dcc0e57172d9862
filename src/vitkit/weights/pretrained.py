"""`load_pretrained`: any supported checkpoint → a ready vitkit model.

Dialects, tried in this order (see converted.py for what each one returns):
    vitkit        a vitkit checkpoint (safetensors whose header says format: vitkit)
    hf            a Hugging Face transformers folder (config.json + model.safetensors / pytorch_model.bin)
    jax           the original JAX release (.npz)
    torchvision   a torchvision state dict (needs the architecture name unless its keys say it)
    timm          a plain timm / vitkit state dict (needs the architecture name)

The weights are then fitted to the model being built: learned position embeddings are resampled
(2-D bicubic, prefix tokens kept) and relative-position tables resized when the image or window
size differs, and a head for another number of classes is left freshly initialised when you ask
for `num_classes`. Everything else must fit exactly: one clear report otherwise.

The fit is checked on the meta device first (weights.skeleton): options that do not describe the file's
tensors are refused before the model is allocated.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..layers.pos_embed import resample_abs_pos_embed
from ..layers.rel_pos import resize_rel_pos_table
from ..models._backbone import backbone_weights, is_pretraining
from ..registry import create_model, model_config
from .checkpoint import is_vitkit_checkpoint, load_checkpoint
from .converted import Converted
from .io import CheckpointError, check_state_dict, read_state_dict
from .skeleton import skeleton


DIALECTS = ("hf", "jax", "torchvision")  # modules of this package with detect()/read(), tried in this order


def _dialects() -> dict:
    """The dialect modules, imported when first needed. A dialect whose module is absent is skipped;
    an error inside one is not."""
    found = {}
    for dialect in DIALECTS:
        try:
            found[dialect] = importlib.import_module(f"{__package__}.{dialect}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{dialect}":
                raise
    return found


def read_any(path: str | Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted:
    """Read a checkpoint of any supported dialect into vitkit's keys (no model is built)."""
    converted = _read_any(Path(path), name, trust_pickle)
    converted.source_path = str(path)
    return converted


def _read_any(path: Path, name: str | None, trust_pickle: bool) -> Converted:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and is_vitkit_checkpoint(path):
        ckpt = load_checkpoint(path)
        if is_pretraining(ckpt.model_name) and name is not None and not is_pretraining(name):  # its backbone
            return backbone_weights(Converted(ckpt.model_name, ckpt.state, dict(ckpt.overrides), None, "vitkit"), name)
        return Converted(name or ckpt.model_name, ckpt.state, dict(ckpt.overrides) if name in (None, ckpt.model_name)
                         else {}, ckpt.classes or None, "vitkit")
    for module in _dialects().values():
        if module.detect(path):
            return module.read(path, name, trust_pickle=trust_pickle)
    if path.is_dir():
        if (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder with a config.json, but not a Hugging Face transformers "
                                  f"model folder: its config.json names no model_type (vit, deit, swin, ...), or "
                                  f"the folder has no model.safetensors or pytorch_model.bin. A timm hub folder "
                                  f"names an 'architecture' instead: pass its weights file with that model name")
        raise CheckpointError(f"{path} is a folder but not a Hugging Face model folder (no config.json with "
                              f"model.safetensors or pytorch_model.bin); pass the weights file itself")
    if name is None:
        read_state_dict(path, trust_pickle=trust_pickle)  # a damaged file gets that error, not the one below
        raise CheckpointError(f"{path} is a plain state dict, which does not say what architecture it is for; pass "
                              f"the model name (--name on the command line), e.g. load_pretrained({str(path)!r}, 'vit_base_patch16_224')")
    return Converted(name, read_state_dict(path, trust_pickle=trust_pickle), {}, None, "timm")


def adapt_state_dict(model: nn.Module, state: dict[str, Tensor], notes: list[str] | None = None) -> dict[str, Tensor]:
    """Fit `state` to `model` where only the image or window size differs (position tables), and supply
    BatchNorm counters a file lacks. What was resized is appended to `notes`, one line each."""
    notes = [] if notes is None else notes
    expected = model.state_dict()
    out = dict(state)
    for key in expected:  # BatchNorm's step counter is bookkeeping, absent from older (torchvision) files
        if key.endswith("num_batches_tracked") and key not in state:
            out[key] = torch.zeros((), dtype=torch.long)
    for key, value in state.items():
        if key not in expected or expected[key].shape == value.shape:
            continue
        target = expected[key].shape
        if key == "pos_embed" and value.ndim == 3:
            prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
            new_grid = tuple(model.patch_embed.grid_size)
            _check_square_grid(value.shape[1], prefix)
            out[key] = resample_abs_pos_embed(value, new_grid, num_prefix_tokens=prefix)
            old = value.shape[1] - prefix
            notes.append(f"resized {key}: {old} patch positions → {new_grid[0]}×{new_grid[1]} (bicubic)")
        elif key.endswith("relative_position_bias_table") and value.ndim == 2:
            window, extra = _table_window(model, key, target[0])
            try:
                out[key] = resize_rel_pos_table(value, window, num_extra=extra)
            except ValueError:  # the file's table is no square window's: its window cannot be told
                raise CheckpointError(f"{key}: the checkpoint's table has {value.shape[0]} rows, which is no square "
                                      f"window's ((2W-1)² + {extra}), so vitkit cannot tell its window to resize it "
                                      f"to {window[0]}×{window[1]}; load it at the image and window size it was "
                                      f"saved for") from None
            notes.append(f"resized {key}: {value.shape[0]} → {target[0]} rows")
    return out


def _check_square_grid(positions: int, prefix: int) -> None:
    """A checkpoint's pos_embed must be this model's prefix tokens plus a square grid (the only kind that can be
    resampled without knowing the file's image size); otherwise say what it would fit."""
    grid = positions - prefix
    if grid > 0 and math.isqrt(grid) ** 2 == grid:
        return
    fits = [p for p in range(0, 9) if positions - p > 0 and math.isqrt(positions - p) ** 2 == positions - p]
    told = ("it fits " + " or ".join(f"{p} prefix token(s) and a {math.isqrt(positions - p)}² grid" for p in fits)
            if fits else "no prefix count makes the rest a square grid")
    raise CheckpointError(f"pos_embed: the checkpoint has {positions} positions, but this model has {prefix} prefix "
                          f"token(s) ([CLS], registers) before its grid, and {positions - prefix} is not a square "
                          f"grid ({told}). The file was saved from a model with other class_token or reg_tokens "
                          f"options (or timm's no_embed_class=True, which vitkit does not build), or at a non-square "
                          f"size: build the model with the file's class_token and reg_tokens (name=None takes them "
                          f"from a file that records them) and at its image size")


def _table_window(model: nn.Module, key: str, rows: int) -> tuple[tuple[int, int], int]:
    """(window (Wh, Ww), extra rows) of the model's relative-position table `key` of `rows` rows: its module's
    window_size (Swin, CoAtNet) or else the patch grid (BEiT's per-block tables), so that a non-square window
    is not taken for a square one; a square window from the row count where neither fits."""
    owner = model.get_submodule(key.rpartition(".")[0])
    window = getattr(owner, "window_size", None) or getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if window is not None:
        wh, ww = (window, window) if isinstance(window, int) else tuple(window)
        extra = rows - (2 * wh - 1) * (2 * ww - 1)
        if extra in (0, 3):
            return (wh, ww), extra
    extra = _extra_rows(rows)
    side = (math.isqrt(rows - extra) + 1) // 2
    return (side, side), extra


def _extra_rows(rows: int) -> int:
    """0 for a Swin table ((2W-1)² rows), 3 for BEiT's ((2W-1)² + 3: the [CLS] rows)."""
    return 0 if math.isqrt(rows) ** 2 == rows else 3


def fit_pretrained(converted: Converted, classes: list[str] | None = None, **overrides) -> tuple[nn.Module, list[str]]:
    """Build `converted`'s model with `overrides` and load its weights, fitted to the new sizes; in eval mode.
    Returns (model, notes): one line for each table resized and for a head left freshly initialised. The head
    is new when num_classes differs, or when `classes` (the names the model will learn) differ from the
    checkpoint's recorded ones."""
    model_config(converted.model_name, **overrides)  # the caller's options: a TypeError for unknown ones, as ever
    options = {**converted.overrides, **overrides}
    source = f"{converted.source_path or 'checkpoint'} ({converted.source})"
    model = skeleton(converted.model_name, options, source, converted.state)  # meta device: shapes only
    notes: list[str] = []
    state = adapt_state_dict(model, converted.state, notes)
    fresh_head: list[str] = []
    renamed = classes is not None and converted.classes is not None and list(classes) != list(converted.classes)
    if "num_classes" in overrides:  # a new head: drop the checkpoint's if it does not fit
        expected = model.state_dict()
        misshaped = [k for k in expected if k.startswith(HEAD_PREFIXES) and k in state
                     and state[k].shape != expected[k].shape]
        absent = [k for k in expected if k.startswith(HEAD_PREFIXES) and k not in state]  # a headless checkpoint
        fresh_head = [k for k in expected if k.startswith(HEAD_PREFIXES) and k in state] if renamed else misshaped
        fresh_head += absent
        state = {k: v for k, v in state.items() if k not in fresh_head}
        if fresh_head:
            why = (f"{overrides['num_classes']} classes" + (" (the checkpoint has none)" if absent else "")
                   if misshaped or absent else "other class names")
            notes.append(f"new head for {why}: {', '.join(fresh_head)} freshly initialised")
    check_state_dict(model, state, source=source, ignore_missing=fresh_head)
    pretrained_classes = None if fresh_head else converted.classes
    heads = getattr(model_config(converted.model_name, **options), "num_classes", None)
    if pretrained_classes and heads is not None and len(pretrained_classes) != heads:
        raise CheckpointError(f"{source} names {len(pretrained_classes)} classes for a head with {heads} outputs, so "
                              f"predictions could not be labelled; the file's record belongs to other weights")
    model = create_model(converted.model_name, **options)
    model.load_state_dict(state, strict=not fresh_head)
    model.pretrained_classes = pretrained_classes
    return model.eval(), notes


# The classifier's parameters in every family: ViT/DeiT/BEiT/Swin/CaiT `head`, DeiT's `head_dist`, ResNet's `fc`.
HEAD_PREFIXES = ("head.", "head_dist.", "fc.")


def load_pretrained(path: str | Path, name: str | None = None, *, trust_pickle: bool = False,
                    **overrides) -> nn.Module:
    """Build the model a checkpoint is for and load it, in eval mode.

    path: a vitkit checkpoint, Hugging Face folder, JAX .npz, torchvision or timm state dict.
    name: the registered model name; needed for plain state dicts, optional otherwise.
    overrides: create_model options, e.g. img_size=384 (position tables are resampled to fit),
        num_classes=10 (the checkpoint's head is dropped and a fresh one initialised).
    The label names, when the checkpoint has them, are in `model.pretrained_classes`.
    """
    return fit_pretrained(read_any(path, name, trust_pickle=trust_pickle), **overrides)[0]
