"""Checks on a model's options before anything is built, whatever the family: each field that shares a name
across families (depth, patch_size, img_size, ...) has one rule, so `create_model(..., depth=-1)` says what is
wrong instead of ending in an IndexError, ZeroDivisionError or "resize the images to 0×0".

    check_config(name, cfg, registered)   ConfigError naming the option, the value, the rule and the registered value
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import VitkitError


class ConfigError(VitkitError):
    """A model option outside what the model can be built with (a ValueError, as every VitkitError)."""


# field → (least value, what it is); a field holds one count, or a tuple of them (one per stage)
_COUNTS = {
    "depth": 1, "patch_size": 1, "in_chans": 1, "embed_dim": 1, "num_heads": 1, "kernel_size": 1, "dim_head": 1,
    "decoder_embed_dim": 1, "decoder_num_heads": 1, "backbone_stem": 1, "backbone_groups": 1, "stem_width": 1,
    "dims": 1, "channels": 1, "backbone_channels": 1, "depths": 1, "layers": 1, "backbone_layers": 1,
    "num_classes": 0, "reg_tokens": 0, "depth_token_only": 0, "decoder_depth": 0,
}
_OPTIONAL_COUNTS = {"window_size": 1, "head_hidden_size": 0}  # None allowed
_SIZES = ("img_size",)  # an int or (H, W), each ≥ 1
_RATES = ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "mask_ratio")  # [0, 1)
_POSITIVE = ("mlp_ratio", "conv_expand_ratio", "decoder_mlp_ratio", "mlp_ratio_token_only", "norm_eps",
             "attn_norm_eps", "conv_norm_eps")


def check_config(name: str, cfg: Any, registered: Any) -> None:
    """Refuse a config whose shared fields break their rule; `registered` is the name's own config (its values
    are suggested)."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    for field in fields:
        value, default = getattr(cfg, field), getattr(registered, field, None)
        problem = _problem(field, value)
        if problem:
            raise ConfigError(f"{name}: {field}={value!r} is not a valid option: {problem} (registered: "
                              f"{field}={default!r})")
    dim, heads = getattr(cfg, "embed_dim", None), getattr(cfg, "num_heads", None)
    if _is_int(dim) and _is_int(heads) and "depths" not in fields and dim % heads:
        divisors = [h for h in range(1, min(dim, 64) + 1) if dim % h == 0]
        raise ConfigError(f"{name}: embed_dim={dim} is not divisible by num_heads={heads}, so the heads cannot split "
                          f"it; use num_heads among {divisors[-6:]} or an embed_dim that is a multiple of {heads}")


def _problem(field: str, value: Any) -> str | None:
    if field in _COUNTS:
        return _count_problem(value, _COUNTS[field], per_stage=True)
    if field in _OPTIONAL_COUNTS:
        return None if value is None else _count_problem(value, _OPTIONAL_COUNTS[field], per_stage=True)
    if field in _SIZES:
        ok = _is_int(value) or (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)))
        if not ok:
            return "it must be a whole number of pixels or (height, width)"
        sides = (value, value) if _is_int(value) else value
        return None if min(sides) >= 1 else "each side must be at least 1 pixel"
    if field in _RATES:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        return None if ok else "it must be a probability in [0, 1)"
    if field in _POSITIVE:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return None if ok else "it must be a number above 0"
    return None


def _count_problem(value: Any, least: int, per_stage: bool) -> str | None:
    values = value if per_stage and isinstance(value, (tuple, list)) else (value,)
    if isinstance(value, (tuple, list)) and not value:
        return "it must name at least one stage"
    if not all(_is_int(v) for v in values):
        return "it must be a whole number" + (" (or one per stage)" if per_stage else "")
    if min(values) < least:
        return f"it must be at least {least}"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
