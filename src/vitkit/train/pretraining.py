"""What the self-supervised objectives (MAE, DINO) share: a classification objective's data, without its labels.

The images and the split are built as for `classify` (so --data, --classes, --train-size, --val-data work the
same); `--model` names the backbone ViT or the pretraining model (prefix + backbone name); labels are never
trained on (mixup and cutmix, which mix them, are refused) and the saved record carries no class names, since
the model has no head to label.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from ..registry import create_model, list_models
from .classify import Classify


def pretraining_name(prefix: str, model: str, objective: str) -> str:
    name = model if model.startswith(prefix) else f"{prefix}{model}"
    if name not in list_models():
        raise ValueError(f"--objective {objective} has nothing registered for {model!r}; the registered ones are "
                         f"{', '.join(list_models(prefix + '*'))} (pass one of them or its backbone's name)")
    return name


class Pretraining(Classify):
    prefix: ClassVar[str]  # of the registered pretraining models: 'mae_', 'dino_'

    def __init__(self, cfg, device, log, init=None):
        if cfg.mixup or cfg.cutmix:
            raise ValueError(f"--objective {self.name} learns from images alone, and mixup/cutmix mix labels: pass "
                             f"--mixup 0 --cutmix 0 (or leave out --recipe deit)")
        super().__init__(dataclasses.replace(cfg, model=pretraining_name(self.prefix, cfg.model, self.name)),
                         device, log, init)
        self.model_overrides.pop("num_classes")
        self.record = {k: v for k, v in self.record.items() if k != "classes"}

    @classmethod
    def adapt_init(cls, init):
        return init  # pretraining continues from the whole model

    def build_model(self) -> nn.Module:
        if self.init is not None:
            return super().build_model()
        return create_model(self.model_name, **self.model_overrides)
