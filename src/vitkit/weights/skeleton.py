"""Model options from a file, checked against its tensors before anything is built for real.

A checkpoint's header (or a config.json) names a model and the options to build it with. Those options are data
from the file, so before vitkit allocates the model they are checked in three steps, each with an error that
names the file:

    check_options   every option is a field of the model's config, with a value of that field's type
    file_config     the config those options give, within the rules registry.model_config enforces
    skeleton        the model built on the meta device (shapes only: no memory, no initialisation); a
                    constructor that rejects the options is reported as the file's fault, and the number of
                    blocks and stages can be no larger than the file's tensor count
    fit_skeleton    the skeleton's state dict against the file's tensors: names, shapes, kinds, finiteness

So a 2 MB file whose header asks for embed_dim=200000, depth=64 is refused in milliseconds, where building that
model would try to allocate 160 GB.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path

import torch
from torch import Tensor, nn

from ..registry import create_model, get_entry, model_config
from .io import CheckpointError, check_state_dict

# Options that set how many blocks or stages a model has: each one holds at least one tensor of the file.
COUNT_FIELDS = ("depth", "depths", "layers", "backbone_layers", "depth_token_only", "decoder_depth")
# Tables a model derives at build time (index buffers, fixed position embeddings) may exceed the file by this much.
DERIVED_BYTES = 1 << 30


def check_options(name: str, options: dict, source: str | Path) -> None:
    """Raise a CheckpointError unless `name` is registered and every option is one of its config's fields with a
    value of that field's type (ints for ints, a pair for img_size, ...)."""
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: the model name is {name!r}, not a string; the file is damaged")
    try:
        cfg = get_entry(name).config
    except KeyError as e:
        raise CheckpointError(f"{source} is for model {name!r}, which vitkit does not have: {e.args[0]}") from None
    if not isinstance(options, dict):
        raise CheckpointError(f"{source}: the options for {name} are a {type(options).__name__}, not a mapping of "
                              f"option names to values; the file is damaged")
    hints = _hints(type(cfg))
    unknown = sorted(str(k) for k in options if k not in hints)
    if unknown:
        raise CheckpointError(f"{source}: {name} has no option(s) {', '.join(unknown)}; the file was written by "
                              f"another vitkit version or is damaged. {name}'s options: {', '.join(sorted(hints))}")
    wrong = [f"{k}={v!r} (expected {_describe(hints[k])})" for k, v in options.items() if not _fits(v, hints[k])]
    if wrong:
        raise CheckpointError(f"{source}: option(s) of the wrong type for {name}: {'; '.join(wrong)}; correct the "
                              f"options passed, or the file's header is damaged")


def file_config(name: str, options: dict, source: str | Path):
    """The config `name` has with a file's `options` (check_options first); a CheckpointError naming the file for a
    value no model can be built with."""
    check_options(name, options, source)
    try:
        return model_config(name, **options)
    except ValueError as e:  # registry's ConfigError: a count below 1, a rate outside [0, 1), ...
        raise CheckpointError(f"{source}: {e}; correct the options passed, or the file is damaged") from e


def skeleton(name: str, options: dict, source: str | Path, state: dict[str, Tensor]) -> nn.Module:
    """`name` built with `options` on the meta device, after check_options; a CheckpointError naming `source` if
    the options cannot build it, ask for more blocks than `state` has tensors, or derive tables far larger than
    the file."""
    file_config(name, options, source)
    blocks = sum(sum(v) if isinstance(v, (tuple, list)) else v for k, v in options.items() if k in COUNT_FIELDS)
    if blocks > len(state):
        asked = ", ".join(f"{k}={options[k]!r}" for k in COUNT_FIELDS if k in options)
        raise CheckpointError(f"{source}: its options ask for {asked}, more blocks than the file's {len(state)} "
                              f"tensors could hold; the options do not describe these weights")
    try:
        with torch.device("meta"):
            model = create_model(name, **options)
    except Exception as e:  # a constructor given options from a file can fail anywhere: the file is to blame
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise CheckpointError(f"{source}: {name} cannot be built with the file's options ({shown or 'none'}): "
                              f"{type(e).__name__}: {e}; correct the options passed, or the file is damaged or "
                              f"was written for another vitkit version") from e
    kept = set(model.state_dict())
    derived = {n: b.numel() * b.element_size() for n, b in model.named_buffers() if n not in kept}
    file_bytes = sum(t.numel() * t.element_size() for t in state.values())
    if sum(derived.values()) > max(DERIVED_BYTES, 4 * file_bytes):
        big = ", ".join(sorted(derived, key=derived.get, reverse=True)[:3])
        raise CheckpointError(f"{source}: with the file's options {name} would derive "
                              f"{sum(derived.values()) / 2**30:.1f} GiB of tables ({big}) for {file_bytes / 2**20:.1f} "
                              f"MiB of weights; the options (image or window size) do not describe these weights")
    return model


def fit_skeleton(name: str, options: dict, source: str | Path, state: dict[str, Tensor],
                 ignore_missing: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """skeleton(), then check_state_dict against `state`: the model on the meta device that `state` fits."""
    model = skeleton(name, options, source, state)
    check_state_dict(model, state, source=str(source), ignore_missing=ignore_missing)
    return model


@functools.lru_cache(maxsize=None)
def _hints(config_type: type) -> dict:
    fields = {f.name for f in dataclasses.fields(config_type)}
    return {k: v for k, v in typing.get_type_hints(config_type).items() if k in fields}


def _fits(value, hint) -> bool:
    """Whether a JSON-decoded value (lists already turned into tuples at the top level) is of type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is typing.Literal:
        return value in args
    return True  # a type this check does not know: the constructor judges it


def _describe(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
