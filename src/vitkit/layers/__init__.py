"""Shared layers. Every model builds on these; none writes its own attention, MLP or drop path."""
from .attention import (Attention, AttentionBase, AttentionRecorder, AttentionResult, CrossAttention, KVCache,
                        attend, attend_scores, causal_mask, merge_masks, padding_mask, record_attention)
from .block import Block, LayerNorm6
from .drop import DropPath, drop_path, drop_path_rates
from .layer_scale import LayerScale, layer_scale, layer_scale_gain
from .mlp import Mlp
from .patch_embed import ImageSizeError, PatchEmbed, to_2tuple
from .pos_embed import resample_abs_pos_embed, sincos_1d, sincos_2d

__all__ = [
    "Attention", "AttentionBase", "AttentionRecorder", "AttentionResult", "Block", "CrossAttention", "DropPath", "ImageSizeError", "KVCache",
    "LayerNorm6", "LayerScale", "layer_scale", "layer_scale_gain", "Mlp", "PatchEmbed", "attend", "attend_scores", "causal_mask", "drop_path", "drop_path_rates",
    "merge_masks", "padding_mask", "record_attention", "resample_abs_pos_embed", "sincos_1d", "sincos_2d", "to_2tuple",
]
