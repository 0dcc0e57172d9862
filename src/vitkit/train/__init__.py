"""Training: one runtime (loop.py) for every objective (classify, distill, mae, dino, mim), configured by a TrainConfig.

The names below are imported on first use, so `vitkit train --help` (which needs only TrainConfig) does not
import torch."""
from __future__ import annotations

from .._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
