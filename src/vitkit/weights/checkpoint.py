"""vitkit's own checkpoint: one safetensors file, nothing pickled.

    tensors   model.<key>          the model's state dict
              train.<name>         optimiser state and RNG state (training checkpoints only)
    metadata  format = "vitkit"    header strings, JSON where structured:
              model                {"name": registered name, "overrides": {config field: value}}
              data                 {"classes", "mean", "std", "img_size", "in_chans", "source"}
              train                {"config", "epoch", "step", "best_val_acc", ...} (training checkpoints only)

The model is rebuilt from its registered name and overrides, so the file says exactly what it holds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from .. import __version__
from ..registry import create_model
from .io import CheckpointError, check_state_dict, read_safetensors, save_safetensors, to_json

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

    def build_model(self) -> nn.Module:
        """The model, built from its name and overrides, with these weights loaded strictly, in eval mode."""
        model = create_model(self.model_name, **self.overrides)
        check_state_dict(model, self.state, source=str(self.path or "checkpoint"))
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
    meta = {"format": FORMAT, "vitkit_version": __version__,
            "model": to_json({"name": model_name, "overrides": overrides}), "data": to_json(data)}
    if train is not None:
        meta["train"] = to_json(train)
    save_safetensors(path, tensors, meta)


def is_vitkit_checkpoint(path: str | Path) -> bool:
    try:
        return read_safetensors(path)[1].get("format") == FORMAT
    except CheckpointError:
        return False


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a vitkit checkpoint; a clear error if the file is another kind of weights file."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a vitkit checkpoint (no 'format: vitkit' in its "
                              f"header); load plain weights with vitkit.create_model(NAME, checkpoint=PATH)")
    model = json.loads(meta["model"])
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in model.get("overrides", {}).items()}
    return Checkpoint(
        model_name=model["name"], overrides=overrides, data=json.loads(meta.get("data", "{}")),
        state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
        train=json.loads(meta["train"]) if "train" in meta else None,
        train_tensors={k[6:]: v for k, v in tensors.items() if k.startswith("train.")},
        path=path,
    )
