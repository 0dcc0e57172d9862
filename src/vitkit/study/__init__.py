"""`vitkit study NAME`: the lectures' claims about ViTs, each reproduced by one command, with its figures and a
verdict that a rule in code draws from them (common.py). One module per study, or per few:

    memory.py        attention-memory     explicit against fused attention, 197 to 4,096 tokens
    distance.py      attention-distance   mean attention distance per layer and head of a trained ViT
    position.py      position-embeddings  with against without, and the 2-D structure of the learned ones
    resolution.py    resolution           a new resolution: interpolated against naively cropped/padded positions
    wrong_token.py   wrong-token          the head reads a patch token instead of [CLS]
    filters.py       filters              principal components of the patch embedding, trained on photo crops
    data_scale.py    data-scale           ViT against a small ResNet as the training set grows; distillation, MAE
    cls_object.py    cls-on-object        [CLS] attention on digits pasted into clutter

    from vitkit.study import run_study
    run_study("attention-memory", quick=True)    # → runs/study-attention-memory/
"""
from __future__ import annotations

import importlib

from .common import STUDIES, VERDICTS, Context, Findings, Study, run_study

ORDER = ("data-scale", "position-embeddings", "resolution", "wrong-token", "attention-distance", "cls-on-object",
         "attention-memory", "filters")  # the order, which --list keeps
MODULES = ("memory", "distance", "position", "resolution", "wrong_token", "filters", "data_scale", "cls_object")


def all_studies() -> dict[str, Study]:
    """Every built study, by name, in ORDER (each module registers its own when imported)."""
    for module in MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{module}":  # a study not built yet is left out; a broken one is not
                raise
    return {n: STUDIES[n] for n in sorted(STUDIES, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))}


__all__ = ["Context", "Findings", "ORDER", "STUDIES", "Study", "VERDICTS", "all_studies", "run_study"]
