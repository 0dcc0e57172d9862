"""Pieces of the common face that several token-model families share: the pooling choice, the pooling
itself, the fresh head reset_classifier puts on, and the formats forward_intermediates returns. (Not a family:
models/__init__ skips modules named _*.)"""
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


def mask_patches(patches: Tensor, mask: Tensor, token: Tensor | None) -> Tensor:
    """Masked image modelling's input: patch embeddings (B, Hp, Wp, D) with the hidden ones, mask (B, Hp·Wp) True,
    replaced by the learned mask token (1, 1, D). The ViT and BEiT encoders both take their masks through this."""
    B, Hp, Wp, D = patches.shape
    if token is None:
        raise ValueError("this model has no mask token; build it with mask_token=True to pass a mask")
    if mask.shape != (B, Hp * Wp):
        raise ValueError(f"mask must be (batch, patches) = ({B}, {Hp * Wp}), got {tuple(mask.shape)}")
    hidden = mask.reshape(B, Hp, Wp, 1).to(patches.dtype)
    return patches * (1 - hidden) + token.reshape(1, 1, 1, D) * hidden


def new_head(in_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised classifier (B, in_features) → (B, num_classes): Linear with truncated-normal
    weights (std 0.02) and zero bias; Identity when num_classes is 0."""
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


# forward_intermediates(output_fmt=...) of the token models (ViT, DeiT, hybrids, BEiT, CaiT):
#   "tokens"  vitkit's default: every token after the block, prefix tokens first, (B, prefix + Hp·Wp, D)
#   "NCHW"    timm's default: the patch tokens alone, laid out as maps, (B, D, Hp, Wp)
#   "NLC"     timm's other format: the patch tokens alone, (B, Hp·Wp, D)
INTERMEDIATE_FORMATS = ("tokens", "NCHW", "NLC")


def check_intermediate_format(output_fmt: str) -> None:
    if output_fmt not in INTERMEDIATE_FORMATS:
        raise ValueError(f"output_fmt must be one of {', '.join(map(repr, INTERMEDIATE_FORMATS))}, got "
                         f"{output_fmt!r}; 'NCHW' and 'NLC' are timm's (patch tokens only)")


def format_intermediates(taken: list[Tensor], output_fmt: str, num_prefix_tokens: int,
                         grid: tuple[int, int]) -> list[Tensor]:
    """Per-block tokens (B, prefix + Hp·Wp, D) → the format asked for (see INTERMEDIATE_FORMATS)."""
    if output_fmt == "tokens":
        return taken
    patches = [t[:, num_prefix_tokens:] for t in taken]  # (B, Hp·Wp, D)
    if output_fmt == "NLC":
        return patches
    Hp, Wp = grid
    return [t.reshape(t.shape[0], Hp, Wp, -1).permute(0, 3, 1, 2).contiguous() for t in patches]  # (B, D, Hp, Wp)
