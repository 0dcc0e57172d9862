"""Pieces of the common face that several token-model families share: the pooling choice, the pooling
itself, and the fresh head reset_classifier puts on. (Not a family: models/__init__ skips modules named _*.)"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (dropout and drop path off) for the block, then the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_global_pool(global_pool: str, allowed: tuple[str, ...]) -> None:
    """Refuse a pooling the model does not have; the error lists `allowed` in the order given."""
    if global_pool not in allowed:
        raise ValueError(f"global_pool must be {' or '.join(map(repr, allowed))}, got {global_pool!r}")


def pool_tokens(x: Tensor, global_pool: str, num_prefix_tokens: int) -> Tensor:
    """tokens (B, N, D) → (B, D): the [CLS] output ('token') or the mean of the tokens after the prefix ('avg')."""
    return x[:, 0] if global_pool == "token" else x[:, num_prefix_tokens:].mean(dim=1)


def new_head(in_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised classifier (B, in_features) → (B, num_classes): Linear with truncated-normal
    weights (std 0.02) and zero bias; Identity when num_classes is 0."""
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
