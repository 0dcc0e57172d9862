"""A pretraining model's backbone, as a plain ViT: what fine-tuning starts from (MAE's encoder, DINO's teacher)."""
from __future__ import annotations

import dataclasses

from ..registry import get_entry, list_models, model_config
from .vit import ViTConfig


def is_pretraining(model_name: str | None) -> bool:
    """A registered pretraining model (MAE, DINO): its builder names the backbone inside it."""
    return bool(model_name) and model_name in list_models() and hasattr(get_entry(model_name).builder,
                                                                          "backbone_prefix")


def backbone_weights(converted, name: str | None = None):
    """A pretraining checkpoint's Converted → its backbone's, a plain ViT's.

    name: the ViT to build (default: the pretraining model's name without its 'mae_' / 'dino_' prefix). Fixed
    sin-cos position embeddings load into the ViT's learned ones, as MAE's fine-tuning does; the ViT gets no head
    (num_classes 0) until the caller gives it one."""
    from ..weights.converted import Converted
    entry = get_entry(converted.model_name)
    full = model_config(converted.model_name, **converted.overrides)
    vit = name or converted.model_name.split("_", 1)[1]
    base = model_config(vit)
    overrides = {f.name: getattr(full, f.name) for f in dataclasses.fields(ViTConfig)
                 if f.name not in ("pos_embed", "dynamic_img_size") and getattr(full, f.name) != getattr(base, f.name)}
    prefix = entry.builder.backbone_prefix
    state = {k.removeprefix(prefix): v for k, v in converted.state.items() if k.startswith(prefix)}
    out = Converted(vit, state, overrides, None, converted.source)
    out.source_path = converted.source_path
    return out
