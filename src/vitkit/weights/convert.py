"""Convert a checkpoint between dialects, and prove the numbers survived the trip.

    convert(src, dst, to="vitkit" | "timm" | "hf")

The check builds the *source library's* model from `src` (timm, transformers; the JAX release through
timm's own npz loader) whenever that library is installed, reads `dst` back with vitkit, and reports the
max |Δlogit| between the two on a fixed random batch.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..registry import create_model
from .checkpoint import save_checkpoint
from .converted import Converted
from .io import atomic_write, save_safetensors
from .pretrained import load_pretrained, read_any
from .skeleton import fit_skeleton

TARGETS = ("vitkit", "timm", "hf")


@dataclass
class ConvertReport:
    model_name: str
    source: str                     # dialect read
    target: str                     # dialect written
    dst: Path
    max_abs_diff: float | None      # vs the source library's own model; None when it could not be built
    reference: str                  # what the check compared against, or why it was skipped


def convert(src: str | Path, dst: str | Path, *, to: str = "vitkit", name: str | None = None,
            overrides: dict | None = None, trust_pickle: bool = False, check: bool = True) -> ConvertReport:
    """overrides: create_model options the source does not record (a plain state dict's depth, say)."""
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    converted = read_any(src, name, trust_pickle=trust_pickle)
    converted.overrides = {**converted.overrides, **(overrides or {})}
    fit_skeleton(converted.model_name, converted.overrides, f"{src} ({converted.source})", converted.state)
    model = create_model(converted.model_name, **converted.overrides)  # allocated only once the weights fit
    model.load_state_dict(converted.state, strict=True)
    dst = Path(dst)
    if to == "vitkit":
        save_checkpoint(dst, model=model, model_name=converted.model_name, overrides=converted.overrides,
                        data={"classes": converted.classes or []})
    elif to == "timm":  # vitkit's keys are timm's
        save_safetensors(dst, model.state_dict())
    else:
        from .hf import write
        from .preprocessor import evaluation_settings, write_preprocessor_config
        write(model, converted.model_name, dst, classes=converted.classes)
        src_pre = Path(src) / "preprocessor_config.json"
        if Path(src).is_dir() and src_pre.is_file():  # a Hugging Face source: its own preprocessing, unchanged
            text = src_pre.read_text()
            atomic_write(dst / src_pre.name, lambda tmp: Path(tmp).write_text(text))
        else:  # so that AutoImageProcessor.from_pretrained(dst) prepares images as vitkit evaluates them
            write_preprocessor_config(dst, **evaluation_settings(src, converted.source, model))
    diff, reference = None, "not checked"
    if check:
        # a timm state dict records no architecture: read it back with the name and options it was written from
        reloaded = (load_pretrained(dst, converted.model_name, **converted.overrides) if to == "timm"
                    else load_pretrained(dst))
        diff, reference = _check_against_source(converted, Path(src), reloaded)
    return ConvertReport(converted.model_name, converted.source, to, dst, diff, reference)


def _fixed_batch(model: nn.Module) -> Tensor:
    cfg = model.cfg
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    return torch.randn(2, cfg.in_chans, h, w, generator=torch.Generator().manual_seed(0))


def _check_against_source(converted: Converted, src: Path, ours: nn.Module) -> tuple[float | None, str]:
    """max |Δlogit| between the source library's model of `src` and `ours`, or None and the reason."""
    x = _fixed_batch(ours)
    library = {"hf": "transformers", "timm": "timm", "vitkit": "timm", "jax": "timm"}.get(converted.source)
    failure = library and _import_failure(library)
    if failure:
        return None, f"skipped: {failure}"
    reference, what = _source_model(converted, src)
    if reference is None:
        return None, what
    with torch.no_grad():
        theirs = reference.eval()(x)
        theirs = getattr(theirs, "logits", theirs)
        mine = ours.eval()(x)
    return (mine - theirs).abs().max().item(), what


def _import_failure(library: str) -> str | None:
    """Why `library` cannot be imported (not installed, or installed with a dependency that fails), or None."""
    if importlib.util.find_spec(library) is None:
        return f"the source library {library} is not installed (pip install {library})"
    try:
        importlib.import_module(library)
    except Exception as e:  # a missing dependency (ImportError), or a broken one (OSError, RuntimeError, ...)
        needs = getattr(e, "name", None)
        why = (f"it needs {needs}, which is not installed" if isinstance(e, ImportError) and needs and needs != library
               else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return f"{library} is installed but cannot be imported ({why}); fix that install to check against it"
    return None


def _source_model(converted: Converted, src: Path):
    """The source library's own model, loaded by that library from `src`."""
    if converted.source == "hf":
        import transformers
        return transformers.AutoModelForImageClassification.from_pretrained(src), \
            f"transformers {transformers.__version__}"
    if converted.source in ("timm", "vitkit", "jax"):
        import timm
        if not timm.is_model(converted.model_name):
            return None, f"skipped: timm has no model named {converted.model_name}"
        model = timm.create_model(converted.model_name, pretrained=False,
                                  **_timm_kwargs(converted))
        if converted.source == "jax":
            from timm.models.vision_transformer import _load_weights
            _load_weights(model, str(src))
        else:
            model.load_state_dict(converted.state, strict=True)
        return model, f"timm {timm.__version__}" + (" (its own npz loader)" if converted.source == "jax" else "")
    return None, f"skipped: no reference library for {converted.source} checkpoints can run here"


def _timm_kwargs(converted: Converted) -> dict:
    """The overrides timm's constructors share with ours (sizes, classes, tokens)."""
    keys = ("num_classes", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "class_token", "reg_tokens", "global_pool", "qkv_bias", "init_values", "depths", "window_size")
    kwargs = {k: v for k, v in converted.overrides.items() if k in keys}
    if "act" in converted.overrides:
        kwargs["act_layer"] = converted.overrides["act"]  # timm's names: 'gelu', 'gelu_tanh'
    return kwargs
