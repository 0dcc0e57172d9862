"""The seam between the one training runtime (train/loop.py) and a training method.

The runtime owns what every run shares: processes, device, threads, autocast, micro-batches and
accumulation, clipping, the optimiser and its schedule, the EMA, checkpoints and exact resume, metrics,
logs, plots and progress. An objective owns the rest:

    train_set / val_set      what a sample is; train_set items are asked for as (index, key) (train/plan.py)
    build_model()            the module the runtime trains (from the --init checkpoint, when one is given)
    loss(model, batch, gen)  the loss of one micro-batch, with extra figures to log; `gen` is the
                             micro-batch's own generator, for draws such as mixup
    evaluate(model, loader, procs)   figures over this process's share of val_set, summed over processes
    score                    which of those figures picks best.safetensors (higher_is_better says which way)
    record                   what is saved beside the weights (classes, normalisation, crop rule, ...)
    state_tensors / load_state_tensors   anything else to carry across a resume
    begin_step / before_update / end_step   per-step hooks: before the micro-batches (schedules), between the
                             gradients and the update (freezing), after the update (a teacher's EMA)
    finish(model, run_dir)   figures of its own, written by rank 0 after the last epoch
    read_init / model_of     how --init is read (a captioner takes a classifier's checkpoint as its encoder), and
                             which model a run trains when --model is not given

A new objective is a subclass registered in OBJECTIVES; it touches no runtime code.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..weights.converted import Converted
from .config import TrainConfig
from .dist import Processes


class Objective:
    name: ClassVar[str]
    score: ClassVar[str]            # the evaluate() figure that picks the best checkpoint
    higher_is_better: ClassVar[bool] = True

    train_set: Dataset
    val_set: Dataset
    record: dict                    # saved beside the weights
    model_name: str                 # the registered name the weights rebuild from
    model_overrides: dict           # create_model options the weights need

    def __init__(self, cfg: TrainConfig, device: torch.device, log: Callable[[str], None],
                 init: Converted | None = None):
        self.cfg, self.device, self.log, self.init = cfg, device, log, init

    @classmethod
    def read_init(cls, cfg: TrainConfig) -> Converted:
        """The --init checkpoint, read as this objective starts from it (adapt_init)."""
        from ..weights.pretrained import read_any
        return cls.adapt_init(read_any(cfg.init, cfg.model))

    @classmethod
    def model_of(cls, init: Converted) -> str | None:
        """The model the run trains when --model is not given: the --init checkpoint's."""
        return init.model_name

    @classmethod
    def adapt_init(cls, init: Converted) -> Converted:
        """The --init checkpoint as this objective starts from it: a pretraining run's backbone (MAE's encoder,
        DINO's teacher) for every objective but the pretraining ones."""
        from ..models._backbone import backbone_weights, is_pretraining
        return backbone_weights(init) if is_pretraining(init.model_name) else init

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, procs: Processes) -> dict[str, float]:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the run log: what is trained on what."""
        return f"{self.name}: {len(self.train_set)} train / {len(self.val_set)} val samples"

    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        pass

    def begin_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Before the micro-batches of optimiser step `step` (0-based, over the whole run)."""

    def before_update(self, model: nn.Module) -> None:
        """The gradients are ready (and clipped); the optimiser applies them next."""

    def end_step(self, model: nn.Module, procs: Processes) -> None:
        """The optimiser has updated the weights (every process calls this)."""

    def finish(self, model: nn.Module, run_dir) -> None:
        """Write the objective's own figures into the run folder (rank 0, after the last epoch)."""


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    from . import caption, classify, dino, distill, mae, mim, seq2seq  # noqa: F401  (they register themselves)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; the known ones are {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
