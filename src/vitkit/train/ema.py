"""An exponential moving average of the weights (Polyak averaging), as DeiT evaluates and keeps it."""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEma:
    """ema ← decay · ema + (1 - decay) · weights after every optimiser step, over every floating tensor of the
    state dict (buffers too: BatchNorm statistics are averaged; integer counters are copied). `module` is a
    frozen copy of the model in eval mode, ready for evaluation or saving."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for (name, ema), value in zip(self.module.state_dict().items(), model.state_dict().values()):
            if ema.is_floating_point():
                ema.lerp_(value.to(ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(value)
