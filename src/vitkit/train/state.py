"""The run folder: what a resume restores, what it refuses to change, and what a killed run leaves behind.

Write order at the end of an epoch (rank 0 only): the metrics row, then best.safetensors (if the score
improved), ema.safetensors, and last.safetensors last of all. A kill anywhere in between leaves `last` at
the previous epoch; the resume replays that epoch exactly, so it writes the same row, the same `best` and
the same `ema` again. Nothing else needs saving: every random draw is keyed by (seed, epoch, step).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from .config import RUNTIME_FIELDS, TrainConfig

RUN_FILES = ("last.safetensors", "best.safetensors", "ema.safetensors", "metrics.jsonl", "metrics.png",
             "config.json")


def flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], list[dict]]:
    """An optimiser state dict (parameters numbered) as flat tensors for safetensors, and its JSON-able groups."""
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()
               if isinstance(v, Tensor)}
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, Tensor], groups: list[dict]) -> dict:
    """flatten_optimizer undone: the state dict that Optimizer.load_state_dict takes."""
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    return {"state": per_param, "param_groups": groups}


def resume_config(saved: TrainConfig, asked: TrainConfig) -> TrainConfig:
    """The saved run's config, with what `asked` may change (RUNTIME_FIELDS: device, threads, epochs, ...).
    A field of `asked` that is set (not None) and differs from the saved run's, and would change the result,
    is refused: a resumed run never silently ignores a flag."""
    changed = []
    for f in dataclasses.fields(TrainConfig):
        new, old = getattr(asked, f.name), getattr(saved, f.name)
        if f.name in RUNTIME_FIELDS or f.name == "name" or new is None or new == old:
            continue
        if f.name == "model_overrides" and not new:
            continue
        changed.append(f"--{f.name.replace('_', '-')} {new!r} (the run has {old!r})")
    if changed:
        raise ValueError("--resume continues a run exactly, so it cannot change " + "; ".join(changed) +
                         ". Drop these flags, or start a new run with --name (or --init from this one's "
                         "best.safetensors to fine-tune it)")
    keep = {k: getattr(asked, k) for k in RUNTIME_FIELDS if getattr(asked, k) is not None}
    return dataclasses.replace(saved, **keep)


def clear_run(run_dir: Path) -> None:
    """--overwrite: remove the old run's files, `last` first, so a kill part-way can never resume it."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def remove_orphans(run_dir: Path) -> list[Path]:
    """Delete temporary files that killed atomic writes left (.NAME.XXXX.tmp); returns what was removed."""
    removed = []
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
