"""Explaining ViTs: analyses that return tensors. Figures are in `vitkit.explain.plots` (needs matplotlib).

    cls_attention(model, images, layers, heads)        → (L, B, H, Gh, Gw)
    attention_rollout(model, images, head_fusion, discard_ratio) → (B, Gh, Gw)
    grad_rollout(model, images, target_class)          → (B, Gh, Gw)
    mean_attention_distance(model, images, patch_size) → (L, H) pixels
    window_attention_maps(swin, images, layer)         → (B, H, L, L)
    pos_embed_similarity(model)                        → (Gh, Gw, Gh, Gw)
    patch_embed_filters(model, k)                      → (k, C, P, P)
    caption_attention(captioner, images, max_len)      → per image: (generated ids, (T, Gh, Gw))
"""
from .attention import (
    GradAttentionRecorder,
    attention_distance,
    attention_layers,
    attention_rollout,
    cls_attention,
    discard_lowest,
    grad_rollout,
    head_mean,
    mean_attention_distance,
    patch_distances,
    record_attention_with_grad,
    upsample_to_image,
    window_attention_maps,
)
from .caption import caption_attention, place_grid
from .embeddings import patch_embed_filters, pos_embed_similarity

__all__ = [
    "GradAttentionRecorder", "attention_distance", "attention_layers", "attention_rollout", "caption_attention",
    "cls_attention", "discard_lowest", "grad_rollout", "head_mean", "mean_attention_distance", "patch_distances",
    "patch_embed_filters", "place_grid", "pos_embed_similarity", "record_attention_with_grad", "upsample_to_image",
    "window_attention_maps",
]
