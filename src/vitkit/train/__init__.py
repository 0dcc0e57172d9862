"""Training: a config dataclass, one loop, AdamW with a warm-up + cosine schedule, exact resume."""
from .config import TrainConfig
from .loop import EvalResult, RunExistsError, RunResult, evaluate, train
from .optim import lr_factor, make_optimizer, param_groups

__all__ = ["EvalResult", "RunExistsError", "RunResult", "TrainConfig", "evaluate", "lr_factor", "make_optimizer",
           "param_groups", "train"]
