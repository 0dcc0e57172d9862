"""The optimiser: parameter groups (weight decay, layer-wise lr decay, frozen backbone), AdamW or SGD, and the
warm-up + cosine schedule. Each group carries `lr_scale`; the runtime sets lr = peak · schedule · lr_scale on
every group at every step, so layer decay is never lost to a scheduler that rewrites the rates."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..weights.pretrained import HEAD_PREFIXES

# A block: ViT/DeiT/BEiT/CaiT `blocks.3`, Swin `layers.1.blocks.0`, ConvNeXt/MaxViT `stages.2.blocks.1`, ResNet
# `layer3.1`; a stage's own parts (Swin `layers.1.downsample`) count with the stage.
_BLOCK = re.compile(r"^((?:blocks|blocks_token_only|layers|stages)\.\d+(?:\.blocks\.\d+)?|layer\d+\.\d+)")


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Depth of every parameter, 0 … L + 1: 0 for what comes before the first block (patch embedding, tokens,
    position embeddings, stem), i for the i-th block in the order the model holds them, L + 1 after the last
    (final norm, head). This is the layering BEiT's and MAE's layer-wise decay use."""
    names = [n for n, _ in model.named_parameters()]
    blocks: dict[str, int] = {}
    for n in names:
        m = _BLOCK.match(n)
        if m and m[1] not in blocks:
            blocks[m[1]] = len(blocks) + 1
    last = len(blocks) + 1
    ids, seen_block = {}, False
    for n in names:
        m = _BLOCK.match(n)
        if m:
            ids[n], seen_block = blocks[m[1]], True
        else:
            ids[n] = last if seen_block or n.startswith(HEAD_PREFIXES) or n.startswith("norm") else 0
    return ids


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def freeze_backbone(model: nn.Module) -> list[str]:
    """requires_grad off for everything but the classifier head; returns the names still trained."""
    trained = [n for n, p in model.named_parameters() if is_head(n)]
    if not trained:
        raise ValueError(f"--freeze backbone found no head parameters in {type(model).__name__} (looked for "
                         f"{', '.join(p.rstrip('.') for p in HEAD_PREFIXES)}); this model cannot be linearly probed")
    for n, p in model.named_parameters():
        p.requires_grad_(is_head(n))
    return trained


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Groups of trainable parameters by (decayed?, depth). No weight decay on norms, biases (any tensor of one
    dimension) and the names the model lists in `no_weight_decay()`. With layer_decay d, a parameter at depth i
    of L + 1 gets lr_scale d^(L + 1 - i): the head 1, the patch embedding the smallest."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    ids = layer_ids(model) if layer_decay else {}
    top = max(ids.values(), default=0)
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or name.split(".")[-1] in skip
        depth = ids.get(name, 0)
        key = (not no_decay, depth)
        if key not in groups:
            scale = layer_decay ** (top - depth) if layer_decay else 1.0
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
                           "layer": depth}
        groups[key]["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters; check --freeze")
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, *, kind: str = "adamw",
                   layer_decay: float | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, layer_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if kind == "adamw":
        # The fused kernel updates every parameter of a group in one call: on a small model, where the per-parameter
        # loop of the default is a sixth of the step, a step is ~15% faster (BENCHMARKS.md, the demo's profile).
        # Sharded (FSDP) parameters keep the default: the fused kernel does not take DTensors.
        fused = all(type(p) is nn.Parameter and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                    for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {kind!r}")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Peak-times-schedule `lr` on every group, times that group's lr_scale (layer decay)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def set_weight_decay(opt: torch.optim.Optimizer, weight_decay: float) -> None:
    """`weight_decay` on every group that decays at all (norms, biases and tokens stay at 0)."""
    for group in opt.param_groups:
        if group["weight_decay"] > 0:
            group["weight_decay"] = weight_decay


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """start → end along half a cosine over total_steps (DINO's schedules for weight decay and momentum)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def noam(step: int, warmup_steps: int) -> float:
    """The Transformer paper's schedule (Vaswani et al., 2017, eq. 3) over its own peak: min(s / w, √(w / s)) for
    step s = step + 1, so 1 at s = w. The paper's rate is d^-0.5 · min(s^-0.5, s · w^-1.5), which is this times
    the peak d^-0.5 · w^-0.5 (7.0e-4 for d = 512, w = 4000)."""
    s, w = step + 1, max(1, warmup_steps)
    return min(s / w, math.sqrt(w / s))


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0, schedule: str = "cosine") -> float:
    """Linear warm-up from 0 to 1 over `warmup_steps`, then cosine from 1 down to `min_ratio`; or, for
    schedule 'noam', the Transformer's warm-up then inverse square root (noam)."""
    if schedule == "noam":
        return noam(step, warmup_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
