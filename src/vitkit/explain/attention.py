"""What a ViT attends to: [CLS] maps, attention rollout, gradient-weighted rollout, attention distance.

Every analysis returns tensors; the figures live in `vitkit.explain.plots`. Token layout (as ViT):

    tokens (B, N, D), N = P + Gh·Gw: P prefix tokens ([CLS], registers, DeiT's distillation token),
    then the patches row-major on the Gh×Gw grid.

The [CLS] token is token 0 whenever the model has one. Only the layers an analysis needs take the explicit
attention path (`record_attention`); the others stay fused. Each analysis runs the model in eval mode
(dropout off) and restores the mode it found.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import AttentionBase, record_attention
from ..models._common import eval_mode

Layers = Iterable[int | str] | None


# ---- helpers ----------------------------------------------------------------------------------------
def attention_layers(model: nn.Module) -> list[str]:
    """Names of the model's attention modules, in forward (definition) order."""
    return [name for name, m in model.named_modules() if isinstance(m, AttentionBase)]


def _resolve_layers(model: nn.Module, layers: Layers) -> list[str]:
    """None → every attention module; ints index attention_layers(model) (negative from the end); str: names."""
    names = attention_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no attention modules (AttentionBase) to record")
    if layers is None:
        return names
    out = []
    for layer in layers:
        if isinstance(layer, str):
            out.append(layer)  # record_attention checks the name
        elif -len(names) <= layer < len(names):
            out.append(names[layer])
        else:
            raise IndexError(f"layer {layer} is out of range: this model has {len(names)} attention layers")
    return out


def _grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    """The patch grid (Gh, Gw) a ViT-like model cuts these images into."""
    if not hasattr(model, "patch_embed"):
        raise TypeError(f"{type(model).__name__} is not a ViT-like model (needs a patch_embed); "
                        f"for Swin use window_attention_maps")
    ph, pw = model.patch_embed.patch_size
    H, W = images.shape[-2:]
    return math.ceil(H / ph), math.ceil(W / pw)  # ceil: a model built with dynamic_img_pad pads up


def _prefix(weights: Tensor, grid: tuple[int, int]) -> int:
    """How many prefix tokens ([CLS], distillation, registers) a layer's keys hold before the patches. Read off
    each layer, since not every layer sees the same tokens (CaiT: patches only, then [CLS] + patches)."""
    P = weights.shape[-1] - grid[0] * grid[1]
    if P < 0:
        raise ValueError(f"{weights.shape[-1]} keys do not fit a {grid[0]}×{grid[1]} patch grid")
    return P


def _same_tokens_everywhere(model: nn.Module, weights: list[Tensor]) -> None:
    """Rollout multiplies the layers' matrices, so every layer must attend over the same tokens."""
    shapes = {tuple(w.shape[-2:]) for w in weights}
    if len(shapes) > 1:
        raise ValueError(f"{type(model).__name__}'s layers attend over different tokens {sorted(shapes)} (CaiT: "
                         f"patches only, then [CLS] over the patches), so rollout does not apply; use cls_attention")


def _needs_cls(model: nn.Module) -> None:
    if getattr(model, "cls_token", None) is None:
        raise ValueError(f"{type(model).__name__} has no [CLS] token, so there is no [CLS] row to read; "
                         f"use mean_attention_distance, or window_attention_maps for Swin")


def _logits(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # a distilled DeiT in distillation training: class head


def _record(model: nn.Module, images: Tensor, names: list[str], heads: list[int] | None = None) -> list[Tensor]:
    """Run the model once and return the weights (B, H, N, N) of each named layer, in `names` order."""
    with eval_mode(model), torch.no_grad(), record_attention(model, names, heads) as rec:
        model(images)
    return [rec.maps[n][0] for n in names]


# ---- [CLS] attention --------------------------------------------------------------------------------
def cls_attention(model: nn.Module, images: Tensor, layers: Layers = None,
                  heads: list[int] | None = None) -> Tensor:
    """The [CLS] query's attention to the patch tokens, on the patch grid.

    images: (B, C, H, W). layers: attention-layer indices or module names (all by default). heads: head
    indices to keep (all by default). Returns (L, B, heads, Gh, Gw); attention to prefix tokens is left
    out, so a map sums to 1 minus what [CLS] gives the prefix tokens.
    """
    _needs_cls(model)
    Gh, Gw = grid = _grid(model, images)
    names = _resolve_layers(model, layers)
    weights = _record(model, images, names, heads)
    with_cls = [(n, w) for n, w in zip(names, weights) if _prefix(w, grid) > 0]  # query 0 is [CLS] there
    if layers is not None and len(with_cls) < len(names):
        missing = sorted(set(names) - {n for n, _ in with_cls})
        raise ValueError(f"layer(s) {', '.join(missing)} do not attend from [CLS] (their tokens are patches only)")
    maps = torch.stack([w[:, :, 0, _prefix(w, grid):] for _, w in with_cls])  # (L, B, heads, Gh·Gw)
    return maps.reshape(*maps.shape[:-1], Gh, Gw)


def head_mean(maps: Tensor) -> Tensor:
    """cls_attention's (L, B, H, Gh, Gw) → (L, B, Gh, Gw), the mean over heads."""
    return maps.mean(dim=2)


def upsample_to_image(maps: Tensor, image_size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Any (..., Gh, Gw) maps → (..., H, W), interpolated (bilinear by default) to the image size."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (∏lead, 1, Gh, Gw)
    kw = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(flat, size=size, mode=mode, **kw)
    return out.reshape(*lead, *size)


# ---- attention rollout (Abnar & Zuidema, 2020) ------------------------------------------------------
_FUSE = {"mean": lambda w: w.mean(dim=1), "max": lambda w: w.amax(dim=1), "min": lambda w: w.amin(dim=1)}


def discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the `ratio` fraction of smallest entries of each image's fused attention, never the [CLS] column.

    fused: (B, N, N). Per image independently: of the N·(N-1) entries outside column 0 (attention *to*
    [CLS]), the floor(ratio · N·(N-1)) smallest are set to 0. This is the common implementation (jacobgil's
    vit-explain) with its two slips fixed: it worked on image 0 of a batch only, and it protected only the
    single entry [0, 0] instead of the whole [CLS] column.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    B, N, _ = fused.shape
    k = int(ratio * N * (N - 1))
    if k == 0:
        return fused
    candidates = fused[:, :, 1:].reshape(B, -1)  # (B, N·(N-1)): every column but [CLS]'s
    idx = candidates.topk(k, dim=-1, largest=False).indices  # (B, k), per image
    kept = candidates.scatter(-1, idx, 0.0).reshape(B, N, N - 1)
    return torch.cat([fused[:, :, :1], kept], dim=-1)


def _rollout(mats: Sequence[Tensor]) -> Tensor:
    """Per-layer (B, N, N) attention → (B, N, N) rollout: Ã = norm_rows(A + I), R = Ã_L ⋯ Ã_1 (float64)."""
    B, N, _ = mats[0].shape
    eye = torch.eye(N, dtype=torch.float64, device=mats[0].device)
    result = eye.expand(B, N, N)
    for a in mats:
        a = a.double() + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def attention_rollout(model: nn.Module, images: Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout: how much each patch flows into the final [CLS] token. images (B, C, H, W) → (B, Gh, Gw).

    Per layer: fuse the heads (mean, max or min), zero the lowest `discard_ratio` of entries per image
    (see `discard_lowest`), add the identity for the residual path and renormalise each row to sum 1;
    then multiply the layers together, last on the left, and read the [CLS] row at the patch columns.
    Not rescaled: values are the rollout's own (float32), summing with the prefix columns to 1.
    """
    if head_fusion not in _FUSE:
        raise ValueError(f"head_fusion must be one of {', '.join(_FUSE)}, got {head_fusion!r}")
    _needs_cls(model)
    Gh, Gw = grid = _grid(model, images)
    weights = _record(model, images, _resolve_layers(model, None))
    _same_tokens_everywhere(model, weights)
    P = _prefix(weights[0], grid)
    fused = [discard_lowest(_FUSE[head_fusion](w), discard_ratio) for w in weights]  # each (B, N, N)
    roll = _rollout(fused)[:, 0, P:]  # (B, Gh·Gw)
    return roll.reshape(-1, Gh, Gw).float()


# ---- gradient-weighted rollout (Chefer et al., 2021, simplified) ------------------------------------
class GradAttentionRecorder:
    """A recorder (same `record(name, weights)` face as AttentionRecorder) that keeps the weights in the graph."""

    def __init__(self):
        self.maps: dict[str, list[Tensor]] = {}

    def record(self, name: str, weights: Tensor) -> None:
        if weights.requires_grad:
            weights.retain_grad()
        self.maps.setdefault(name, []).append(weights)


@contextmanager
def record_attention_with_grad(model: nn.Module, layers: Layers = None) -> Iterator[GradAttentionRecorder]:
    """As `record_attention`, but the recorded weights (B, H, N, N) stay attached to the autograd graph."""
    names = _resolve_layers(model, layers)
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(modules.get(n), AttentionBase)]
    if unknown:
        raise KeyError(f"no attention module named {', '.join(unknown)}; see attention_layers(model)")
    recorder = GradAttentionRecorder()
    for n in names:
        modules[n].recorder, modules[n].name = recorder, n
    try:
        yield recorder
    finally:
        for n in names:
            modules[n].recorder = None


def grad_rollout(model: nn.Module, images: Tensor, target_class: int | Tensor) -> Tensor:
    """Gradient-weighted rollout for one class. images (B, C, H, W); target_class: int or (B,) → (B, Gh, Gw).

    Per layer: Ā = mean over heads of A ⊙ ReLU(∂ logit_target / ∂A), then as attention_rollout: add the
    identity, renormalise rows, multiply through the layers, read the [CLS] row at the patch columns.
    The gradients are taken with autograd.grad, so the parameters' .grad are left as they were.
    """
    _needs_cls(model)
    names = _resolve_layers(model, None)
    x = images.detach().clone().requires_grad_(True)  # a graph even when the parameters are frozen
    with eval_mode(model), torch.enable_grad(), record_attention_with_grad(model, names) as rec:
        logits = _logits(model(x))  # (B, classes)
    weights = [rec.maps[n][0] for n in names]
    target = torch.as_tensor(target_class, device=logits.device).long().expand(logits.shape[0])
    score = logits.gather(1, target[:, None]).sum()  # images are independent: each gets its own gradient
    grads = torch.autograd.grad(score, weights)
    _same_tokens_everywhere(model, weights)
    fused = [(w.detach() * g.clamp(min=0)).mean(dim=1) for w, g in zip(weights, grads)]  # each (B, N, N)
    Gh, Gw = grid = _grid(model, images)
    roll = _rollout(fused)[:, 0, _prefix(weights[0], grid):]  # (B, Gh·Gw)
    return roll.reshape(-1, Gh, Gw).float()


# ---- mean attention distance (ViT paper, Fig. 7 right) ----------------------------------------------
def patch_distances(grid: tuple[int, int], patch_size: int | tuple[int, int] = 1) -> Tensor:
    """(Gh·Gw, Gh·Gw) Euclidean distances in pixels between patch centres (row-major), patch_size (ph, pw)."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    Gh, Gw = grid
    rows, cols = torch.meshgrid(torch.arange(Gh), torch.arange(Gw), indexing="ij")
    centres = torch.stack([rows.flatten() * ph, cols.flatten() * pw], dim=-1).double()  # (M, 2)
    return torch.cdist(centres, centres)


def attention_distance(weights: Tensor, grid: tuple[int, int], patch_size: int | tuple[int, int],
                       num_prefix_tokens: int = 0) -> Tensor:
    """One layer's mean attention distance per head. weights (B, H, N, N) → (H,), in pixels.

    For each patch query q: Σ_k w̃[q, k] · d(q, k) over the patch keys k, where w̃ is the attention to the
    patches renormalised to sum 1 (attention to prefix tokens has no place on the image, so it is left out
    rather than counted as distance 0) and d the distance between patch centres. Averaged over the patch
    queries (prefix queries left out) and the images.
    """
    P = num_prefix_tokens
    w = weights[:, :, P:, P:].double()  # (B, H, M, M): patch queries × patch keys
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    d = patch_distances(grid, patch_size).to(w.device)  # (M, M)
    per_query = (w * d).sum(dim=-1)  # (B, H, M)
    return per_query.mean(dim=(0, 2)).float()


def mean_attention_distance(model: nn.Module, images: Tensor, patch_size: int | tuple[int, int] | None = None,
                            layers: Layers = None) -> Tensor:
    """Mean attention distance of every head of every layer, in pixels: images (B, C, H, W) → (L, heads).

    See `attention_distance`. patch_size: pixels per patch (the model's by default); pass 1 for patch units.
    Layers are recorded one at a time, so only one N×N matrix is held at once. Only layers whose queries are
    the patches count (CaiT's class-attention layers, where [CLS] alone queries, have no distance).
    """
    grid = _grid(model, images)
    names = _resolve_layers(model, layers)
    out = []
    for name in names:
        (w,) = _record(model, images, [name])
        if w.shape[-2] == w.shape[-1]:
            out.append(attention_distance(w, grid, patch_size or model.patch_embed.patch_size, _prefix(w, grid)))
        elif layers is not None:
            raise ValueError(f"layer {name} has no patch queries ([CLS] alone queries it), so no attention distance")
    return torch.stack(out)  # (L, heads)


# ---- Swin: window attention on the image ------------------------------------------------------------
def window_attention_maps(model: nn.Module, images: Tensor, layer: int | str) -> Tensor:
    """One Swin block's window attention as dense image attention: → (B, heads, L, L), L = H·W of its map.

    layer: the block's module name ('layers.0.blocks.1') or its index among the SwinBlocks (negative from
    the end). Entry [b, h, p, q]: how much map position p (row-major) attends to q; zero outside p's window.
    """
    from ..models.swin import SwinBlock

    blocks = {n: m for n, m in model.named_modules() if isinstance(m, SwinBlock)}
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no SwinBlock; use cls_attention for ViT-like models")
    names = list(blocks)
    if isinstance(layer, str):
        if layer not in blocks:
            raise KeyError(f"no SwinBlock named {layer!r}; this model's are: {', '.join(names[:6])} …")
        name = layer
    elif -len(names) <= layer < len(names):
        name = names[layer]
    else:
        raise IndexError(f"layer {layer} is out of range: this model has {len(names)} Swin blocks")
    block = blocks[name]
    grid: list[tuple[int, int]] = []
    hook = block.register_forward_pre_hook(lambda _m, args: grid.append(tuple(args[0].shape[1:3])))
    try:
        (w,) = _record(model, images, [f"{name}.attn"])
    finally:
        hook.remove()
    return block.image_attention(w, grid[0])
