"""vitkit's own checkpoint: one safetensors file, nothing pickled.

    tensors   model.<key>          the model's state dict
              train.<name>         optimiser state and RNG state (training checkpoints only)
    metadata  format = "vitkit"    header strings, JSON where structured:
              model                {"name": registered name, "overrides": {config field: value}}
              data                 {"classes", "mean", "std", "img_size", "in_chans", "crop_pct", "source", ...}
              train                {"config", "epoch", "step", "best_val_acc", ...} (training checkpoints only)
              checksum             "sha256:<hex>" over every tensor (name, dtype, shape, bytes) and every other
                                   header entry

The model is rebuilt from its registered name and overrides, so the file says exactly what it holds.

Reading checks all of it before anything is used, each problem with an error that names the file:
- the checksum, so a byte changed on disk or in transfer is caught (files written before vitkit wrote
  checksums have none, and load without this check);
- the header's structure and types (a JSON object for each entry, a string name, a mapping of options);
- the model's options against the tensors, on the meta device (weights.skeleton), so a header that asks for
  a huge model is refused before any memory is allocated; then kinds (floats) and finiteness of the weights;
- the data record against the model: as many class names as the head has outputs, the image size and channels
  the model was built for, one mean and std per channel, crop_pct in (0, 1].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from .. import __version__
from ..registry import create_model, model_config
from .io import (CHECKSUM, CheckpointError, checksum, read_safetensors, read_safetensors_metadata, save_safetensors,
                 to_json, verify_checksum)
from .skeleton import fit_skeleton

FORMAT = "vitkit"


@dataclass
class Checkpoint:
    model_name: str
    overrides: dict
    data: dict                                   # classes, mean, std, img_size, in_chans, source
    state: dict[str, Tensor]                     # model weights
    train: dict | None = None                    # training progress and config, if a training checkpoint
    train_tensors: dict[str, Tensor] = field(default_factory=dict)
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes") or [])

    def check(self) -> nn.Module:
        """The model on the meta device, once its options, weights and data record are found to fit together;
        a CheckpointError naming the file otherwise."""
        source = str(self.path or "checkpoint")
        skeleton = fit_skeleton(self.model_name, self.overrides, source, self.state)
        check_data(self.data, model_config(self.model_name, **self.overrides), source)
        return skeleton

    def build_model(self) -> nn.Module:
        """The model, built from its name and overrides, with these weights loaded strictly, in eval mode. Checked
        on the meta device first (check()), so nothing is allocated for weights that do not fit."""
        self.check()
        model = create_model(self.model_name, **self.overrides)
        model.load_state_dict(self.state, strict=True)
        return model.eval()


def save_checkpoint(path: str | Path, *, model: nn.Module | None = None, model_name: str, overrides: dict,
                    data: dict, train: dict | None = None, train_tensors: dict[str, Tensor] | None = None,
                    state: dict[str, Tensor] | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout): the weights of `model`, or
    `state` where they are already gathered (a sharded model's)."""
    if (model is None) == (state is None):
        raise TypeError("save_checkpoint takes the weights as model= or as state=, one of the two")
    tensors = {f"model.{k}": v for k, v in (model.state_dict() if state is None else state).items()}
    tensors.update({f"train.{k}": v for k, v in (train_tensors or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "vitkit_version": __version__,
            "model": to_json({"name": model_name, "overrides": overrides}), "data": to_json(data)}
    if train is not None:
        meta["train"] = to_json(train)
    meta[CHECKSUM] = checksum(tensors, meta)
    save_safetensors(path, tensors, meta)


def is_vitkit_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a safetensors file whose header says format: vitkit (the tensors are not read)."""
    try:
        return read_safetensors_metadata(path).get("format") == FORMAT
    except CheckpointError:
        return False


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a vitkit checkpoint (see the module docstring); a clear error if the file is another kind of
    weights file, is damaged, or holds weights and a record that do not fit together."""
    path = Path(path)
    tensors, meta = read_safetensors(path, verify=False)  # verified below, once the header is known to be whole
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a vitkit checkpoint (no 'format: vitkit' in its "
                              f"header); load plain weights with vitkit.create_model(NAME, checkpoint=PATH)")
    model, data = _entry(meta, "model", path, required=True), _entry(meta, "data", path)
    train = _entry(meta, "train", path) if "train" in meta else None
    verify_checksum(path, tensors, meta)
    options = model.get("overrides", {})
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: the header's model overrides are a {type(options).__name__}, not a mapping "
                              f"of option names to values; the file is damaged")
    if "name" not in model:
        raise CheckpointError(f"{path}: the header's model entry has no 'name' (the registered model to rebuild); "
                              f"the file is damaged or was not written by vitkit.save_checkpoint")
    ckpt = Checkpoint(
        model_name=model["name"], overrides={k: tuple(v) if isinstance(v, list) else v for k, v in options.items()},
        data=data, state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, train=train,
        train_tensors={k[6:]: v for k, v in tensors.items() if k.startswith("train.")},
        path=path,
    )
    ckpt.check()
    return ckpt


def _entry(meta: dict[str, str], key: str, path: Path, required: bool = False) -> dict:
    """A header entry decoded from JSON; it must be an object."""
    if key not in meta:
        if required:
            raise CheckpointError(f"{path} is a vitkit checkpoint without a {key!r} entry in its header (the "
                                  f"registered model name and options it was saved from); the file is damaged or "
                                  f"was not written by vitkit.save_checkpoint")
        return {}
    try:
        value = json.loads(meta[key])
    except ValueError as e:
        raise CheckpointError(f"{path}: the header's {key!r} entry is not valid JSON ({e}); the file is "
                              f"damaged") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the header's {key!r} entry is a {type(value).__name__}, not a JSON object; "
                              f"the file is damaged")
    return value


# ---- the data record -------------------------------------------------------------------------------------------
def check_data(data: dict, cfg, source: str) -> None:
    """The data record against the model's config `cfg`: what `vitkit predict`, `eval` and `explain` rely on."""
    for key, (what, ok) in _DATA_FIELDS.items():
        if data.get(key) is not None and not ok(data[key]):
            raise CheckpointError(f"{source}: the data record's {key} is {data[key]!r}, not {what}; the file is "
                                  f"damaged")
    classes, heads = data.get("classes") or [], getattr(cfg, "num_classes", None)
    if classes and heads is not None and len(classes) != heads:
        head = f"a head with {heads} outputs" if heads else "no classifier head"
        raise CheckpointError(f"{source} names {len(classes)} classes but its model has {head}, so predictions "
                              f"could not be labelled; the file is damaged or its record belongs to other weights")
    channels = getattr(cfg, "in_chans", None)
    if data.get("in_chans") is not None and data["in_chans"] != channels:
        raise CheckpointError(f"{source}: the data record says {data['in_chans']}-channel images but the model "
                              f"takes {channels}; the file is damaged")
    for key in ("mean", "std"):
        if data.get(key) is not None and channels is not None and len(data[key]) != channels:
            raise CheckpointError(f"{source}: the data record has {len(data[key])} {key} value(s) for "
                                  f"{channels}-channel images; the file is damaged")
    if data.get("img_size") is not None and hasattr(cfg, "img_size") and _pair(data["img_size"]) != _pair(cfg.img_size):
        raise CheckpointError(f"{source}: the data record's image size {data['img_size']} is not the "
                              f"{_pair(cfg.img_size)} its model was built for; the file is damaged")


def _pair(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


_DATA_FIELDS = {  # key: (what it must be, test)
    "classes": ("a list of class names", _strings),
    "class_filter": ("a list of class names", _strings),
    "mean": ("a list of numbers, one per channel", lambda v: isinstance(v, list) and all(map(_is_number, v))),
    "std": ("a list of positive numbers, one per channel",
            lambda v: isinstance(v, list) and all(_is_number(s) and s > 0 for s in v)),
    "img_size": ("a positive size (an int or [height, width])",
                 lambda v: (_is_int(v) and v > 0) or (isinstance(v, list) and len(v) == 2
                                                      and all(_is_int(s) and s > 0 for s in v))),
    "in_chans": ("a number of channels", lambda v: _is_int(v) and v > 0),
    "crop_pct": ("a fraction in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "source": ("a data set name or folder", lambda v: isinstance(v, str)),
    "val_data": ("a folder", lambda v: isinstance(v, str)),
    "seed": ("an integer seed", _is_int),
    "val_fraction": ("a fraction in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "epoch": ("an epoch number", _is_int),
}
