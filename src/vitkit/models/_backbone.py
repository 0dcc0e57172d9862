"""A pretraining model's backbone, as a plain model: what fine-tuning starts from (MAE's encoder, DINO's teacher,
MIM's encoder: a ViT or a BEiT)."""
from __future__ import annotations

import dataclasses

from ..registry import get_entry, list_models, model_config

# Options of the pretraining model that its backbone does not carry over: fixed sin-cos positions load into learned
# ones (as MAE's fine-tuning does), and MIM's mask token has no use in a classifier (its tensor is dropped too).
_NOT_CARRIED = ("pos_embed", "dynamic_img_size", "mask_token")


def is_pretraining(model_name: str | None) -> bool:
    """A registered pretraining model (MAE, DINO, MIM): its builder names the backbone inside it."""
    return bool(model_name) and model_name in list_models() and hasattr(get_entry(model_name).builder,
                                                                          "backbone_prefix")


def backbone_weights(converted, name: str | None = None):
    """A pretraining checkpoint's Converted → its backbone's.

    name: the model to build (default: the pretraining model's name without its 'mae_' / 'dino_' / 'mim_' prefix).
    The backbone gets no head (num_classes 0) until the caller gives it one."""
    from ..weights.converted import Converted
    entry = get_entry(converted.model_name)
    full = model_config(converted.model_name, **converted.overrides)
    backbone = name or converted.model_name.split("_", 1)[1]
    base = model_config(backbone)
    overrides = {f.name: getattr(full, f.name) for f in dataclasses.fields(base)
                 if f.name not in _NOT_CARRIED and getattr(full, f.name) != getattr(base, f.name)}
    prefix = entry.builder.backbone_prefix
    state = {k.removeprefix(prefix): v for k, v in converted.state.items()
             if k.startswith(prefix) and k != prefix + "mask_token"}
    out = Converted(backbone, state, overrides, None, converted.source)
    out.source_path = converted.source_path
    return out
