"""Training: one runtime (loop.py) for every objective (classify, distill, ...), configured by a TrainConfig."""
from .classify import EvalResult, evaluate
from .config import TrainConfig, load_config_file, resolve, validate
from .dist import resolve_device
from .image_data import eval_transform, validation_set
from .loop import RunExistsError, RunResult, optimizer_step, train
from .objective import OBJECTIVES, Objective, get_objective, register_objective
from .optim import layer_ids, lr_factor, make_optimizer, param_groups

__all__ = ["EvalResult", "OBJECTIVES", "Objective", "RunExistsError", "RunResult", "TrainConfig", "eval_transform",
           "evaluate", "get_objective", "layer_ids", "load_config_file", "lr_factor", "make_optimizer",
           "optimizer_step", "param_groups", "register_objective", "resolve", "resolve_device", "train", "validate",
           "validation_set"]
