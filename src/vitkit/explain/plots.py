"""Figures for the analyses in vitkit.explain. Each function returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing here touches the global
backend or keeps figures alive; `fig.savefig(path)` renders them with Agg.
"""
from __future__ import annotations

import math

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from .attention import upsample_to_image


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # Agg canvas: savefig / draw work without pyplot
    return fig


def _image_hwc(image: Tensor):
    """(C, H, W) tensor → (H, W) or (H, W, 3) array in [0, 1] for imshow."""
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy()


def plot_attention_overlay(image: Tensor, maps: Tensor, titles: list[str] | None = None,
                           alpha: float = 0.6, cmap: str = "jet") -> Figure:
    """One image (C, H, W) under one or more attention maps (Gh, Gw) or (K, Gh, Gw), upsampled to the image.

    For cls_attention's output pass e.g. head_mean(maps)[:, b] (one map per layer) or rollout[b].
    """
    maps = maps[None] if maps.dim() == 2 else maps  # (K, Gh, Gw)
    up = upsample_to_image(maps.detach().float().cpu(), tuple(image.shape[-2:]))  # (K, H, W)
    K = up.shape[0]
    fig = _figure((2.5 * (K + 1), 2.8))
    axes = fig.subplots(1, K + 1, squeeze=False)[0]
    img = _image_hwc(image)
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0].set_title("image")
    for i in range(K):
        axes[i + 1].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[i + 1].imshow(up[i].numpy(), cmap=cmap, alpha=alpha)
        axes[i + 1].set_title(titles[i] if titles else f"map {i}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_attention_distance(distances: Tensor) -> Figure:
    """The ViT paper's scatter: mean attention distance (pixels) against network depth, one dot per head.

    distances: (L, H) from mean_attention_distance.
    """
    L, H = distances.shape
    fig = _figure((5, 4))
    ax = fig.subplots()
    for h in range(H):
        ax.scatter(torch.arange(L).numpy(), distances[:, h].detach().cpu().numpy(), s=12, label=f"head {h}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    if H <= 16:
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def plot_pos_embed_similarity(sim: Tensor, cmap: str = "viridis") -> Figure:
    """Grid of grids: tile (i, j) shows the cosine similarity of position (i, j) to every position.

    sim: (Gh, Gw, Gh, Gw) from pos_embed_similarity.
    """
    Gh, Gw = sim.shape[:2]
    fig = _figure((0.6 * Gw + 1, 0.6 * Gh + 0.5))
    axes = fig.subplots(Gh, Gw, squeeze=False)
    for i in range(Gh):
        for j in range(Gw):
            im = axes[i][j].imshow(sim[i, j].detach().cpu().numpy(), vmin=-1, vmax=1, cmap=cmap)
            axes[i][j].axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    return fig


def plot_filters(filters: Tensor, cols: int = 7) -> Figure:
    """Tiles of patch-embedding filters (k, C, P, P), e.g. patch_embed_filters' principal components."""
    k = filters.shape[0]
    rows = math.ceil(k / cols)
    fig = _figure((1.2 * cols, 1.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for n, ax in enumerate(a for row in axes for a in row):
        ax.axis("off")
        if n < k:
            img = _image_hwc(filters[n])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    fig.tight_layout()
    return fig


def plot_alignment(weights: Tensor, source: list[str], target: list[str], title: str = "") -> Figure:
    """The alignment matrix as the attention papers draw it: target tokens down, source tokens across, each cell
    the weight token i gave to source position j (Bahdanau et al., 2015, Figure 3). weights: (T, S)."""
    T, S = weights.shape
    fig = _figure((0.45 * S + 1.6, 0.45 * T + 1.2))
    ax = fig.subplots()
    im = ax.imshow(weights.detach().float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks(range(S), source, rotation=90)
    ax.set_yticks(range(T), target)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
