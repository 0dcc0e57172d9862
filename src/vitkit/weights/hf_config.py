"""The fields of a Hugging Face config.json that vitkit reads, checked for their JSON types first (weights.hf).

transformers writes each field with one type: sizes as positive integers, flags as booleans, lists of
per-stage sizes, a label map of id strings to names. A config.json edited by hand or damaged can hold anything;
`check_config` refuses a field of another type with a CheckpointError that names the file and the field, so the
readers in hf.py can take the types for granted.
"""
from __future__ import annotations

import math
from pathlib import Path

from .io import CheckpointError


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _size(v) -> bool:
    """A positive int, or a [height, width] pair of them."""
    return _positive_int(v) or (isinstance(v, list) and len(v) == 2 and all(map(_positive_int, v)))


def _positive_ints(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(map(_positive_int, v))


def _label_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(n, (str, int, float)) for k, n in v.items())


POSITIVE_INT = ("a positive integer", _positive_int)
FLAG = ("true or false", lambda v: isinstance(v, bool))
# field: (what transformers writes, test, whether null is accepted: hf.py reads these with `or` a default)
FIELDS: dict[str, tuple[str, object, bool]] = {
    "model_type": ("a string such as \"vit\"", lambda v: isinstance(v, str), False),
    "architectures": ("a list of class names", lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
                      True),
    "id2label": ("an object of id strings to label names", _label_map, True),
    "label2id": ("an object of label names to ids", lambda v: isinstance(v, dict), True),
    "num_labels": ("a number of labels (0 or more)", lambda v: _is_int(v) and v >= 0, False),
    "hidden_act": ("an activation name", lambda v: isinstance(v, str), False),
    "pooler_act": ("an activation name", lambda v: isinstance(v, str), False),
    "layer_norm_eps": ("a positive number", lambda v: _number(v) and v > 0, False),
    "image_size": ("a positive size (an integer or [height, width])", _size, False),
    "patch_size": ("a positive size (an integer or [height, width])", _size, False),
    **{k: (*POSITIVE_INT, False) for k in (
        "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "embed_dim",
        "window_size", "num_stages", "decoder_hidden_size", "decoder_intermediate_size",
        "decoder_num_attention_heads", "decoder_num_hidden_layers")},
    "pooler_output_size": (*POSITIVE_INT, True),
    **{k: ("a non-empty list of positive integers", _positive_ints, False)
       for k in ("depths", "num_heads", "hidden_sizes")},
    "mlp_ratio": ("a positive number", lambda v: _number(v) and v > 0, False),
    "layer_scale_init_value": ("a number (0 for none)", lambda v: _number(v) and v >= 0, False),
    "mask_ratio": ("a fraction in [0, 1)", lambda v: _number(v) and 0 <= v < 1, False),
    **{k: (*FLAG, False) for k in (
        "qkv_bias", "use_absolute_embeddings", "use_absolute_position_embeddings", "use_relative_position_bias",
        "use_shared_relative_position_bias", "use_mean_pooling", "norm_pix_loss")},
    "vitkit_model": ("a registered vitkit model name", lambda v: isinstance(v, str), True),
}


def check_config(config: dict, source: str | Path) -> None:
    """Raise a CheckpointError for the first field vitkit reads that does not hold what transformers writes."""
    for key, (what, ok, nullable) in FIELDS.items():
        if key not in config or (config[key] is None and nullable):
            continue
        if not ok(config[key]):
            raise CheckpointError(f"{source}: config.json has {key}={config[key]!r}, where transformers writes "
                                  f"{what}; the file is damaged or was edited by hand: correct that field")
