"""What every checkpoint dialect (Hugging Face, torchvision, the JAX release, timm) is read into.

A dialect module exposes two functions:

    detect(path: Path) -> bool
        Cheap: is this file or folder in my dialect? (Looks at names and headers, not at tensors.)
    read(path: Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted
        The weights renamed to vitkit's (= timm's) keys, and the registered model they fit.

`vitkit.load_pretrained` picks the dialect, builds the model and loads the weights strictly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..registry import get_entry, model_config
from .io import CheckpointError

# Fields a name given by the caller may differ in from the file's architecture (they become overrides).
# `act` is not a shape: it says how the weights were trained (the JAX release's tanh GELU), so the file decides it.
FREE_FIELDS = frozenset({"img_size", "num_classes", "head_hidden_size", "in_chans", "act"})


@dataclass
class Converted:
    model_name: str                      # a registered vitkit model name, e.g. 'vit_base_patch16_224'
    state: dict[str, Tensor]             # weights under vitkit's (= timm's) state-dict keys
    overrides: dict = field(default_factory=dict)   # create_model options the weights need (num_classes, img_size, ...)
    classes: list[str] | None = None     # label names when the source has them (e.g. Hugging Face id2label)
    source: str = ""                     # the dialect: 'vitkit', 'timm', 'hf', 'torchvision', 'jax'
    source_path: str = ""                # the file or folder it was read from


def registered_family(name: str, path: Path) -> str:
    """The family of a registered model name, or a CheckpointError saying the name is unknown."""
    try:
        return get_entry(name).family
    except KeyError as e:
        raise CheckpointError(f"cannot load {path} as {name!r}: {e.args[0]}") from None


def resolve_name(name: str | None, default: str, arch: dict, path: Path, describe: str,
                 free: frozenset = FREE_FIELDS) -> tuple[str, dict]:
    """(registered name, overrides) for weights whose config fields are `arch`.

    name None: `default`, with every field of `arch` that differs from it as an override. A given `name` must
    agree with `arch` on every field but those in `free`, or a CheckpointError says what differs.
    """
    model_name = name or default
    registered_family(model_name, path)  # a clear error for an unknown name
    cfg = model_config(model_name)
    fields = {f.name for f in dataclasses.fields(cfg)}
    overrides = {f: v for f, v in arch.items() if f in fields and _differs(getattr(cfg, f), v)}
    if name is not None:
        clash = {f: v for f, v in overrides.items() if f not in free}
        if clash:
            what = ", ".join(f"{f} {v!r} (the model has {getattr(cfg, f)!r})" for f, v in clash.items())
            raise CheckpointError(f"{path} does not fit {name!r}: the file's architecture ({describe}) differs in "
                                  f"{what}. Pass the matching model name, or name=None to pick it from the file")
    return model_name, overrides


def _differs(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) != tuple(b)
    if isinstance(a, tuple) and isinstance(b, int):  # img_size (224, 224) vs 224
        return a != (b, b)
    return a != b
