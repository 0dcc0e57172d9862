"""Training: one runtime (loop.py) for every objective (classify, distill, mae, dino), configured by a TrainConfig.

The names below are imported on first use, so `vitkit train --help` (which needs only TrainConfig) does not
import torch."""
from __future__ import annotations

import importlib

_LAZY = {
    "EvalResult": "classify", "evaluate": "classify",
    "TrainConfig": "config", "load_config_file": "config", "resolve": "config", "validate": "config",
    "resolve_device": "dist",
    "eval_transform": "image_data", "validation_set": "image_data",
    "RunExistsError": "loop", "RunResult": "loop", "optimizer_step": "loop", "train": "loop",
    "OBJECTIVES": "objective", "Objective": "objective", "get_objective": "objective",
    "register_objective": "objective",
    "layer_ids": "optim", "lr_factor": "optim", "make_optimizer": "optim", "param_groups": "optim",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
