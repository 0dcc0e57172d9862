"""Helpers for the model-family tests: sizes on the meta device, and vitkit's models against timm's.

A parity test builds timm's model with random weights, perturbs them (`perturb`) so that no degenerate
initial value (a zero bias, a unit norm, a 1e-5 LayerScale gain) can hide a mistake, loads timm's state dict
into vitkit's model strictly (`timm_pair`, `pair_with`) and compares the logits (`max_logit_diff`).

What each family perturbs beyond the common rule, and why, stays in its own test file: it passes `perturb`
its rules (`params=`, `buffers=`) and a noise `scale`, and hands that function to `timm_pair(perturb_with=...)`.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Callable

import torch

import vitkit

TOL = 1e-4  # max |Δlogit| allowed between vitkit and timm on the same weights and input

Rule = Callable[[torch.Tensor], object]  # changes one tensor in place


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **overrides) -> torch.nn.Module:
    """Build on the meta device: the shapes without the memory or the initialisation time."""
    with torch.device("meta"):
        return vitkit.create_model(name, **overrides)


# ---- perturbation rules: each changes a tensor in place -----------------------------------------------------
def add_noise(std: float) -> Rule:
    """t += N(0, std²)."""
    return lambda t: t.add_(torch.randn_like(t) * std)


def redraw_normal(std: float) -> Rule:
    """t ← N(0, std²), whatever it held."""
    return lambda t: t.normal_(std=std)


def redraw_uniform(low: float, high: float) -> Rule:
    """t ← U(low, high), whatever it held."""
    return lambda t: t.uniform_(low, high)


def scale_by(factor: float) -> Rule:
    """t ← factor · t."""
    return lambda t: t.mul_(factor)


# BatchNorm running statistics moved off their initial 0 and 1: mean + N(0, 0.1²), var · U(1, 2).
BN_STATS_NOISE: dict[str, Rule] = {"*running_mean": add_noise(0.1),
                                   "*running_var": lambda t: t.mul_(1 + torch.rand_like(t))}


def perturb(model: torch.nn.Module, *, scale: float = 0.02, params: dict[str, Rule] | None = None,
            buffers: dict[str, Rule] | None = None) -> torch.nn.Module:
    """Make the degenerate initial values random, in place, and return the model.

    Each parameter, in `named_parameters()` order, gets the first rule in `params` whose glob pattern matches
    its name (`"*relative_position_bias_table"`, `"head.weight"`); a parameter no rule matches gets noise of
    std `scale` if it is not a Linear or conv weight (ndim 2 or 4: random already), i.e. biases, norms,
    tokens, position embeddings and LayerScale gains. Buffers change only where a rule in `buffers` matches
    (BatchNorm running statistics, say); the rest, such as index tables, are left alone.
    """
    params, buffers = params or {}, buffers or {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            rule = next((r for pattern, r in params.items() if fnmatchcase(name, pattern)), None)
            if rule is not None:
                rule(p)
            elif p.ndim not in (2, 4):
                p.add_(torch.randn_like(p) * scale)
        for name, b in model.named_buffers():
            rule = next((r for pattern, r in buffers.items() if fnmatchcase(name, pattern)), None)
            if rule is not None:
                rule(b)
    return model


# ---- vitkit against timm -------------------------------------------------------------------------------------
def pair_with(theirs: torch.nn.Module, name: str, *, perturb_with: Callable = perturb,
              **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, theirs), both in eval mode: timm's model `theirs`, perturbed, and vitkit's model `name` built with
    `overrides` and loaded strictly with timm's state dict. For timm models that `timm.create_model` cannot
    build (a reduced config, an option it drops)."""
    theirs = perturb_with(theirs).eval()
    ours = vitkit.create_model(name, **overrides).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def timm_pair(timm, name: str, *, perturb_with: Callable = perturb, num_classes: int = 1000,
              **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, theirs): timm's model `name` with random weights, perturbed, and vitkit's with the same options
    and timm's state dict, both in eval mode. Both get a `num_classes` head whatever the name's default (timm
    builds some, e.g. vit_huge_patch14_224, without a head)."""
    theirs = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    return pair_with(theirs, name, perturb_with=perturb_with, num_classes=num_classes, **overrides)


def max_logit_diff(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, *, num_classes: int = 1000,
                   min_spread: float | None = None) -> float:
    """max |Δlogit| between the two models on x: (B, C, H, W), after checking both give (B, num_classes).

    With `min_spread`, timm's logits for the first two images must differ by more than it: logits that do not
    depend on the input would make any comparison pass.
    """
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == b.shape == (x.shape[0], num_classes)
    if min_spread is not None:
        assert (b[0] - b[1]).abs().max() > min_spread  # the logits depend on the input: a real comparison
    return (a - b).abs().max().item()
