"""Model names → builders. Names follow timm's, so users find the models they already know."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .layers.config_checks import check_config

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # the ViT release (and timm's augreg weights) normalise to [-1, 1]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str                      # 'vit', 'deit', 'swin', ...
    config: Any                      # the family's config dataclass with this variant's values
    builder: Callable[[Any], nn.Module]
    mean: tuple[float, ...] = HALF   # normalisation the model's weights expect
    std: tuple[float, ...] = HALF
    tags: tuple[str, ...] = field(default=())
    tiny: dict = field(default_factory=dict)  # options that shrink it to a smoke-test size (tests, docs)
    inputs: str = "image"            # what forward takes: 'image' (B, C, H, W), or 'tokens' (source and target ids)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _ensure_models_loaded() -> None:
    from . import models  # noqa: F401  (importing registers every family)


def get_entry(name: str) -> ModelEntry:
    _ensure_models_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vitkit models` lists them all"
        raise KeyError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    _ensure_models_loaded()
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family))


def model_config(name: str, **overrides) -> Any:
    """The config a model name stands for, with overrides applied and checked."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{name} has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}")
    cfg = dataclasses.replace(entry.config, **overrides)
    check_config(name, cfg, entry.config)  # a ConfigError (ValueError) naming a value no model can be built with
    return cfg


def create_model(name: str, *, checkpoint: str | None = None, **overrides) -> nn.Module:
    """Build a registered model. `overrides` change config fields: num_classes, img_size, in_chans, depth, ...

    checkpoint: weights to load strictly: any checkpoint `vitkit.load_pretrained` reads (a vitkit,
    timm, Hugging Face, torchvision or JAX checkpoint), fitted to a new img_size or num_classes.
    """
    if checkpoint is not None:
        from .weights.pretrained import load_pretrained
        return load_pretrained(checkpoint, name, **overrides).train()
    cfg = model_config(name, **overrides)
    model = get_entry(name).builder(cfg)
    model.model_name = name
    return model
