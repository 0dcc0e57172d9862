"""What a ViT's embeddings learned: position-embedding similarity and the principal patch filters (ViT paper, Fig. 7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pos_embed_similarity(model: nn.Module) -> Tensor:
    """Cosine similarity between the position embeddings of every pair of patch positions.

    Returns (Gh, Gw, Gh, Gw): entry [i, j, k, l] compares position (i, j) with (k, l). Prefix tokens
    ([CLS], registers, distillation token) are left out.
    """
    pos = getattr(model, "pos_embed", None)
    if pos is None:
        raise ValueError(f"{type(model).__name__} has no absolute position embedding (pos_embed is None or missing)")
    Gh, Gw = model.patch_embed.grid_size
    P = model.num_prefix_tokens
    if pos.shape[1] not in (Gh * Gw, P + Gh * Gw):
        raise ValueError(f"pos_embed has {pos.shape[1]} positions; expected {Gh * Gw} patches (+ {P} prefix tokens)")
    e = F.normalize(pos.detach()[0, -Gh * Gw:].double(), dim=-1)  # (Gh·Gw, D): the patch positions
    return (e @ e.T).reshape(Gh, Gw, Gh, Gw).float()


def patch_embed_filters(model: nn.Module, k: int = 28) -> Tensor:
    """The top-k principal components of the patch-embedding filters: (k, C, P, P).

    The projection's D filters (D, C·P·P) are centred (their mean filter subtracted) and decomposed by SVD;
    the rows of Vᵀ with the k largest singular values are the components, orthonormal as flattened vectors.
    Signs are fixed so that each component's largest-magnitude entry is positive.
    """
    weight = model.patch_embed.proj.weight.detach()  # (D, C, ph, pw)
    D, C, ph, pw = weight.shape
    flat = weight.reshape(D, -1).double()
    limit = min(D, C * ph * pw)
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} components asked for, but {D} filters of size {C}×{ph}×{pw} give at most {limit}")
    _, _, vh = torch.linalg.svd(flat - flat.mean(dim=0, keepdim=True), full_matrices=False)
    comps = vh[:k]  # (k, C·ph·pw)
    peak = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True))  # (k, 1)
    comps = comps * peak.sign()
    return comps.reshape(k, C, ph, pw).float()
