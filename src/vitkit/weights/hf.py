"""Hugging Face transformers checkpoints: a folder with config.json and model.safetensors (or pytorch_model.bin).

    detect(path)                      → is `path` such a folder?
    read(path, name=None)             → Converted: vitkit's (= timm's) keys, the registered model and its overrides
    model_for_config(config, keys)    → (model name, overrides) for a parsed config.json, without reading weights
    write(model, model_name, out_dir) → a folder that `transformers.<Arch>.from_pretrained(out_dir)` loads

transformers is never imported: config.json is plain JSON and the tensors are renamed here. What each transformers
class becomes:

    ViTForImageClassification               vit_*                 classifier → head
    ViTModel                                vit_*, num_classes=0  its pooler (Linear + tanh on the [CLS] output: the
                                                                  JAX release's pre-logits layer) → pre_logits.fc
                                                                  (head_hidden_size), so the output is pooler_output
    DeiTForImageClassificationWithTeacher   deit_*_distilled_*    cls_classifier → head, distillation_classifier →
                                                                  head_dist; the output is the mean of the two
    DeiTForImageClassification, DeiTModel   deit_*, reg_tokens=1  transformers' DeiT always has the distillation
                                                                  token; read only by the [CLS] head it is still in
                                                                  attention, which is what a register token is
    SwinForImageClassification, SwinModel   swin_*                the patch merging that closes stage i opens
                                                                  stage i+1 (timm's layout)
    BeitForImageClassification, BeitModel   beit_*                lambda_1/2 → gamma_1/2, pooler.layernorm → fc_norm
    BeitForMaskedImageModeling              mim_beit_*            beit. → encoder., layernorm → norm, lm_head → head;
                                                                  no tokenizer: the codebook is left unfitted
    ConvNextForImageClassification, -Model  convnext_*            pwconv1/2 → mlp.fc1/2, as 1×1 convs where the
                                                                  model has conv_mlp=True (convnext_atto)

Tensor names are read and written in the layout transformers saves (and the hub holds), e.g.
`vit.encoder.layer.0.attention.attention.query.weight`; transformers 5 renames them in memory (`layers.0`,
`q_proj`) but still saves and loads that layout.

Separate q, k, v projections become one fused `qkv` (concatenated in q, k, v order) and are split again on
writing. Tensors that do not change the forward pass are dropped on reading: `mask_token` (kept for masked image
modelling only) and `relative_position_index` (a buffer that old transformers versions saved; vitkit rebuilds it).

What is refused, with an error that says why, rather than loaded with different numbers:
- ViT and DeiT take the config's layer_norm_eps through vitkit's norm_eps option (transformers' default is 1e-12,
  the original release's 1e-6). BEiT, ConvNeXt and Swin have a fixed eps in vitkit (1e-6, 1e-6, 1e-5), so a config
  with another (transformers' default 1e-12 for BEiT and ConvNeXt) is refused; set "layer_norm_eps" in config.json
  to vitkit's value if a small difference from transformers' outputs is acceptable. write() records the model's
  own eps, so its folders load exactly.
- hidden_act other than exact GELU ("gelu", "gelu_python") or, for ViT and DeiT, its tanh approximation
  ("gelu_pytorch_tanh", "gelu_new": vitkit's act='gelu_tanh'); pooler_act other than "tanh".
- Architectures that vitkit does not have: Swin with absolute position embeddings, ConvNeXt with a kernel other
  than 7 or an MLP ratio other than 4 on writing, ...

Dropout and drop-path rates are training settings and are not carried over; vitkit's defaults stay.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..registry import get_entry, list_models
from .converted import Converted
from .hf_config import check_config
from .io import CheckpointError, atomic_write, read_state_dict, save_safetensors
from .skeleton import file_config, fit_skeleton

CONFIG = "config.json"
# Weight files in the order they are tried: safetensors first, pickles (read with weights_only=True) after.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
SUPPORTED = ("vit", "deit", "swin", "beit", "convnext", "vit_mae")


# ---- detecting and reading the folder -------------------------------------------------------------------------
def detect(path: str | Path) -> bool:
    """A folder with config.json naming a transformers `model_type` and a weights file (single or sharded)."""
    path = Path(path)
    if not path.is_dir() or not (path / CONFIG).is_file() or _weights_file(path) is None:
        return False
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return True  # a transformers-looking folder with a broken config.json: read() says what is wrong
    return isinstance(config, dict) and "model_type" in config  # timm's hub config.json has 'architecture' instead


def _weights_file(folder: Path) -> Path | None:
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def _read_config(folder: Path) -> dict:
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}; a Hugging Face model folder holds config.json next to its "
                              f"weights (save_pretrained writes both)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except ValueError as e:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / CONFIG} holds a {type(config).__name__}, not a JSON object")
    return config


def _read_weights(folder: Path, trust_pickle: bool) -> dict[str, Tensor]:
    """All tensors of the folder: one file, or the shards an *.index.json names."""
    path = _weights_file(folder)
    if path is None:
        raise CheckpointError(f"{folder} has {CONFIG} but no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not path.name.endswith(".index.json"):
        return read_state_dict(path, trust_pickle=trust_pickle)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a shard index (a JSON object with a 'weight_map')") from e
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(folder / shard, trust_pickle=trust_pickle))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{path} lists tensors its shards do not hold: {', '.join(missing[:8])}")
    return state


def read(path: str | Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted:
    """A transformers model folder → weights under vitkit's keys, the registered model name and its overrides.

    name: the vitkit model to build (it must be of the architecture the folder holds); by default the registered
    model of that family that needs the fewest overrides (a `vitkit_model` entry in config.json, which write()
    records, is preferred). The weights are checked against that model (built on the meta device): one
    CheckpointError names every missing, unexpected or mis-shaped tensor.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; a Hugging Face checkpoint is a folder with {CONFIG} and "
                              f"model.safetensors (or pytorch_model.bin)")
    config = _read_config(folder)
    family = _family(config, folder)
    raw = _read_weights(folder, trust_pickle)
    hf_state = _strip_prefix(raw, _prefix(family, config, raw.keys()))
    model_name, overrides = model_for_config(config, hf_state.keys(), name, source=str(folder))
    cfg = file_config(model_name, overrides, folder)  # a CheckpointError for options no model can take
    state = family.to_vitkit(hf_state, config, cfg)
    fit_skeleton(model_name, overrides, f"{folder} (Hugging Face {config['model_type']}, renamed to vitkit keys)",
                 state)  # built on the meta device: shapes only, no memory, no initialisation time
    return Converted(model_name=model_name, state=state, overrides=overrides,
                     classes=_classes(config, cfg.num_classes), source="hf")


def _prefix(family: _Family, config: dict, keys: Iterable[str]) -> str:
    """The base-model prefix to strip. BeitForMaskedImageModeling keeps its 'beit.': its head has a `layernorm` of
    its own beside the base model's."""
    mim = (config.get("architectures") or [None])[0] == "BeitForMaskedImageModeling" or "lm_head.weight" in keys
    return "" if mim else family.prefix


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys of *ForImageClassification checkpoints start with the base model's name ('vit.', ...); *Model's do not."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _classes(config: dict, num_classes: int) -> list[str] | None:
    """id2label as a list ordered by id; None without a head or for transformers' placeholder names LABEL_i."""
    id2label = config.get("id2label") or {}
    try:
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except ValueError:
        raise CheckpointError(f"config.json id2label has non-integer ids: {sorted(id2label)[:5]}") from None
    if not num_classes or len(labels) != num_classes or labels == [f"LABEL_{i}" for i in range(len(labels))]:
        return None
    return labels


# ---- choosing the vitkit model ----------------------------------------------------------------------------------
def model_for_config(config: dict, keys: Iterable[str] | None = None, name: str | None = None, *,
                     source: str = "config.json") -> tuple[str, dict]:
    """(registered vitkit model name, create_model overrides) reproducing a parsed transformers config.json.

    keys: the checkpoint's tensor names (prefix such as 'vit.' removed or not); they tell whether a ViTModel /
    DeiTModel folder holds the optional pooler. Without them, the config's `architectures` decides (a *Model is
    taken to have its default pooler). name: a model to use instead of the closest registered one.
    """
    family = _family(config, source)
    if keys is not None:
        keys = set(keys)
        keys = {k.removeprefix(_prefix(family, config, keys)) for k in keys}
    reference, target = family.target(config, keys, source)
    _check_eps(config, family, source, eps_is_an_option="norm_eps" in target)
    ref_entry = get_entry(reference)
    target = {**target, **_act_option(config, family, source, hasattr(ref_entry.config, "act"))}
    recorded = config.get("vitkit_model")  # written by write(); a stale or foreign one is ignored
    if name is None and recorded in list_models() and get_entry(recorded).builder is ref_entry.builder \
            and type(get_entry(recorded).config) is type(ref_entry.config):
        name = recorded
    if name is not None:
        entry = get_entry(name)
        if entry.builder is not ref_entry.builder or type(entry.config) is not type(ref_entry.config):
            arch = (config.get("architectures") or [family.model_type])[0]
            raise CheckpointError(f"{source} holds a transformers {arch}, which {name} cannot take (it "
                                  f"builds a {entry.builder.__name__}); use a {ref_entry.family} model such as "
                                  f"{reference}, or leave the name out")
        chosen = name
    else:
        candidates = [n for n in list_models() if get_entry(n).family in family.families
                      and get_entry(n).builder is ref_entry.builder
                      and type(get_entry(n).config) is type(ref_entry.config)]

        def cost(n):
            ovr = _overrides(get_entry(n).config, target)
            return ("in_chans" in ovr, len(ovr), n)  # never a grayscale model for colour weights if avoidable
        chosen = min(candidates, key=cost)
    return chosen, _overrides(get_entry(chosen).config, target)


# Options whose value is only an initial value: the checkpoint supplies the tensor, so only presence matters.
_PRESENCE_ONLY = {"init_values", "ls_init_value"}


def _overrides(cfg, target: dict) -> dict:
    out = {}
    for k, v in target.items():
        have = getattr(cfg, k)
        if k in _PRESENCE_ONLY:
            same = bool(have) == bool(v)
        elif k == "img_size":
            same = _pair(have) == _pair(v)
        elif isinstance(v, tuple):
            same = tuple(have) == v
        else:
            same = have == v
        if not same:
            out[k] = v
    return out


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


EXACT_GELU = ("gelu", "gelu_python")             # transformers' names for the erf GELU
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")     # ... and for its tanh approximation (one formula)


def _act_option(config: dict, family: _Family, source: str, act_is_an_option: bool) -> dict:
    """The create_model option for the config's hidden_act: {} for exact GELU, {'act': 'gelu_tanh'} for the tanh
    approximation where the family has that option (ViT, DeiT); anything else is refused."""
    act = config.get("hidden_act", "gelu")
    if act in EXACT_GELU:
        return {}
    if act in TANH_GELU and act_is_an_option:
        return {"act": "gelu_tanh"}
    known = EXACT_GELU + (TANH_GELU if act_is_an_option else ())
    raise CheckpointError(
        f"{source}: hidden_act={act!r}, but vitkit's {family.model_type} models compute "
        f"{'exact or tanh-approximated' if act_is_an_option else 'exact'} GELU only, so the outputs would differ; "
        f"vitkit reads hidden_act {', '.join(map(repr, known))}")


def _check_eps(config: dict, family: _Family, source: str, eps_is_an_option: bool) -> None:
    """ViT and DeiT take the config's LayerNorm eps (norm_eps); the other families have a fixed one: refuse
    configs that would give other numbers."""
    eps = config.get("layer_norm_eps", family.hf_eps)
    if eps != family.eps and not eps_is_an_option:
        raise CheckpointError(
            f"{source}: layer_norm_eps={eps:g}, but vitkit's {family.model_type} models use LayerNorm eps "
            f"{family.eps:g} and have no option to change it, so the outputs would differ (slightly) from "
            f"transformers' on the same weights; vitkit refuses rather than give other numbers silently. "
            f"transformers' default for {family.model_type} is {family.hf_eps:g} (the original releases use "
            f"{family.eps:g}); if a small difference is acceptable, set \"layer_norm_eps\": {family.eps:g} in "
            f"config.json")


def _image_size(config: dict, default: int = 224):
    size = config.get("image_size", default)
    if isinstance(size, (list, tuple)):
        return size[0] if size[0] == size[1] else tuple(size)
    return size


def _patch_size(config: dict, source: str, default: int) -> int:
    p = config.get("patch_size", default)
    if isinstance(p, (list, tuple)):
        if p[0] != p[1]:
            raise CheckpointError(f"{source}: patch_size {list(p)} is not square; vitkit's patch embeddings are P×P")
        p = p[0]
    return p


def _mlp_ratio(width: int, hidden: int, source: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CheckpointError(f"{source}: intermediate_size {hidden} is not reproducible as int({width} · mlp_ratio)")
    return ratio


def _num_labels(config: dict) -> int:
    if "id2label" in config:
        return len(config["id2label"] or {})
    return config.get("num_labels", 2)  # transformers' default


def _architecture(config: dict, keys: set[str] | None, supported: dict[str, str], source: str) -> str:
    """The head kind ('classifier', 'teacher', 'base'): from `architectures`, else from the tensor names."""
    archs = config.get("architectures") or []
    if archs:
        kind = supported.get(archs[0])
        if kind is None:
            raise CheckpointError(f"{source}: architecture {archs[0]!r} is not supported; vitkit reads "
                                  f"{', '.join(supported)}")
        return kind
    if keys is None:
        return "classifier"
    if "cls_classifier.weight" in keys:
        return "teacher"
    return "classifier" if "classifier.weight" in keys else "base"


# ---- renaming ------------------------------------------------------------------------------------------------------
_FIELDS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "w": r"(?P<w>weight|bias)", "qkv": r"(?P<qkv>query|key|value)"}


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(p) if n % 2 == 0 else _FIELDS[p] for n, p in enumerate(parts)) + r"\Z")


@dataclass(frozen=True)
class Rule:
    """One tensor name in transformers' layout ↔ vitkit's. Templates take {i}, {j} (indices) and {w} (weight|bias).
    With {qkv} in `hf`, the query, key and value tensors are concatenated (q, k, v order) into `ours`."""
    hf: str
    ours: str
    shift: int = 0  # vitkit's {i} = transformers' {i} + shift (Swin's patch merging moves to the next stage)

    def rename(self, key: str, to_ours: bool) -> tuple[str, str | None] | None:
        """(new name, 'query'|'key'|'value'|None) if `key` matches this rule's side, else None."""
        src, dst = (self.hf, self.ours) if to_ours else (self.ours, self.hf)
        m = _regex(src).match(key)
        if m is None:
            return None
        fields = m.groupdict()
        if "i" in fields:
            fields["i"] = str(int(fields["i"]) + (self.shift if to_ours else -self.shift))
        part = fields.pop("qkv", None)
        return dst.format(**fields, qkv="{qkv}"), part  # writing: '{qkv}' stays for the caller to fill


def _rename_to_ours(state: dict[str, Tensor], rules: list[Rule], drop: tuple[str, ...]) -> dict[str, Tensor]:
    """Keys no rule matches keep their transformers name, so the fit check reports them as unexpected."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for key, t in state.items():
        if key.endswith(drop):
            continue
        hit = next((r for r in (rule.rename(key, True) for rule in rules) if r is not None), None)
        if hit is None:
            out[key] = t
        elif hit[1] is None:
            out[hit[0]] = t
        else:
            fused.setdefault(hit[0], {})[hit[1]] = t
    for key, parts in fused.items():
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:
            raise CheckpointError(f"the checkpoint has {', '.join(sorted(parts))} but no {', '.join(absent)} "
                                  f"for {key} (query, key and value are fused into one tensor)")
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def _rename_to_hf(state: dict[str, Tensor], rules: list[Rule], model_name: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, t in state.items():
        for rule in rules:
            hit = rule.rename(key, False)
            if hit is None:
                continue
            if "{qkv}" in rule.hf:
                for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                    out[hit[0].replace("{qkv}", part)] = chunk.contiguous()
            else:
                out[hit[0]] = t
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise CheckpointError(f"{model_name} has tensors with no counterpart in transformers' layout: "
                              f"{', '.join(unmatched[:8])}; it cannot be written as a Hugging Face checkpoint")
    return out


# ---- the families ------------------------------------------------------------------------------------------------
def _block_rules(layer: str, ours: str, attention: str) -> list[Rule]:
    """The pre-LN block that ViT, DeiT and Swin share in transformers' layout (`attention`: the q/k/v module)."""
    return [Rule(f"{layer}.layernorm_before.{{w}}", f"{ours}.norm1.{{w}}"),
            Rule(f"{layer}.attention.{attention}.{{qkv}}.{{w}}", f"{ours}.attn.qkv.{{w}}"),
            Rule(f"{layer}.attention.output.dense.{{w}}", f"{ours}.attn.proj.{{w}}"),
            Rule(f"{layer}.layernorm_after.{{w}}", f"{ours}.norm2.{{w}}"),
            Rule(f"{layer}.intermediate.dense.{{w}}", f"{ours}.mlp.fc1.{{w}}"),
            Rule(f"{layer}.output.dense.{{w}}", f"{ours}.mlp.fc2.{{w}}")]


_VIT_RULES = [
    Rule("embeddings.cls_token", "cls_token"),
    Rule("embeddings.position_embeddings", "pos_embed"),
    Rule("embeddings.patch_embeddings.projection.{w}", "patch_embed.proj.{w}"),
    *_block_rules("encoder.layer.{i}", "blocks.{i}", "attention"),
    Rule("layernorm.{w}", "norm.{w}"),
    Rule("pooler.dense.{w}", "pre_logits.fc.{w}"),
    Rule("classifier.{w}", "head.{w}"),
]
_DEIT_RULES = [Rule("embeddings.distillation_token", "reg_token"), *_VIT_RULES]
_DEIT_TEACHER_RULES = [Rule("embeddings.distillation_token", "dist_token"),
                       Rule("cls_classifier.{w}", "head.{w}"),
                       Rule("distillation_classifier.{w}", "head_dist.{w}"), *_VIT_RULES]
_SWIN_RULES = [
    Rule("embeddings.patch_embeddings.projection.{w}", "patch_embed.proj.{w}"),
    Rule("embeddings.norm.{w}", "patch_embed.norm.{w}"),
    *_block_rules("encoder.layers.{i}.blocks.{j}", "layers.{i}.blocks.{j}", "self"),
    Rule("encoder.layers.{i}.blocks.{j}.attention.self.relative_position_bias_table",
         "layers.{i}.blocks.{j}.attn.relative_position_bias_table"),
    Rule("encoder.layers.{i}.downsample.reduction.weight", "layers.{i}.downsample.reduction.weight", shift=1),
    Rule("encoder.layers.{i}.downsample.norm.{w}", "layers.{i}.downsample.norm.{w}", shift=1),
    Rule("layernorm.{w}", "norm.{w}"),
    Rule("classifier.{w}", "head.fc.{w}"),
]
_BEIT_LAYER = "encoder.layer.{i}"
_BEIT_RULES = [
    Rule("embeddings.cls_token", "cls_token"),
    Rule("embeddings.position_embeddings", "pos_embed"),
    Rule("embeddings.patch_embeddings.projection.{w}", "patch_embed.proj.{w}"),
    Rule(f"{_BEIT_LAYER}.layernorm_before.{{w}}", "blocks.{i}.norm1.{w}"),
    Rule(f"{_BEIT_LAYER}.attention.attention.{{qkv}}.weight", "blocks.{i}.attn.qkv.weight"),
    Rule(f"{_BEIT_LAYER}.attention.attention.query.bias", "blocks.{i}.attn.q_bias"),  # k has no bias in BEiT
    Rule(f"{_BEIT_LAYER}.attention.attention.value.bias", "blocks.{i}.attn.v_bias"),
    Rule(f"{_BEIT_LAYER}.attention.attention.relative_position_bias.relative_position_bias_table",
         "blocks.{i}.attn.relative_position_bias_table"),
    Rule(f"{_BEIT_LAYER}.attention.output.dense.{{w}}", "blocks.{i}.attn.proj.{w}"),
    Rule(f"{_BEIT_LAYER}.layernorm_after.{{w}}", "blocks.{i}.norm2.{w}"),
    Rule(f"{_BEIT_LAYER}.intermediate.dense.{{w}}", "blocks.{i}.mlp.fc1.{w}"),
    Rule(f"{_BEIT_LAYER}.output.dense.{{w}}", "blocks.{i}.mlp.fc2.{w}"),
    Rule(f"{_BEIT_LAYER}.lambda_1", "blocks.{i}.gamma_1"),
    Rule(f"{_BEIT_LAYER}.lambda_2", "blocks.{i}.gamma_2"),
    Rule("encoder.relative_position_bias.relative_position_bias_table", "rel_pos_bias.relative_position_bias_table"),
    Rule("layernorm.{w}", "norm.{w}"),
    Rule("pooler.layernorm.{w}", "fc_norm.{w}"),
    Rule("classifier.{w}", "head.{w}"),
]
_CNX_LAYER = "encoder.stages.{i}.layers.{j}"
_CONVNEXT_RULES = [
    Rule("embeddings.patch_embeddings.{w}", "stem.0.{w}"),
    Rule("embeddings.layernorm.{w}", "stem.1.{w}"),
    Rule("encoder.stages.{i}.downsampling_layer.0.{w}", "stages.{i}.downsample.0.{w}"),
    Rule("encoder.stages.{i}.downsampling_layer.1.{w}", "stages.{i}.downsample.1.{w}"),
    Rule(f"{_CNX_LAYER}.dwconv.{{w}}", "stages.{i}.blocks.{j}.conv_dw.{w}"),
    Rule(f"{_CNX_LAYER}.layernorm.{{w}}", "stages.{i}.blocks.{j}.norm.{w}"),
    Rule(f"{_CNX_LAYER}.pwconv1.{{w}}", "stages.{i}.blocks.{j}.mlp.fc1.{w}"),
    Rule(f"{_CNX_LAYER}.pwconv2.{{w}}", "stages.{i}.blocks.{j}.mlp.fc2.{w}"),
    Rule(f"{_CNX_LAYER}.layer_scale_parameter", "stages.{i}.blocks.{j}.gamma"),
    Rule("layernorm.{w}", "head.norm.{w}"),
    Rule("classifier.{w}", "head.fc.{w}"),
]
# ViTMAEForPreTraining: the encoder under vit., the decoder under decoder. (transformers 5 saves the decoder's
# layers as decoder.decoder_encoder.layer.i, the hub's folders as decoder.decoder_layers.i: both are read).
_MAE_RULES = [
    *[Rule(f"vit.{r.hf}", f"encoder.{r.ours}") for r in _VIT_RULES if not r.hf.startswith(("pooler", "classifier"))],
    Rule("decoder.decoder_embed.{w}", "decoder_embed.{w}"),
    Rule("decoder.mask_token", "mask_token"),
    Rule("decoder.decoder_pos_embed", "decoder_pos_embed"),
    *_block_rules("decoder.decoder_layers.{i}", "decoder_blocks.{i}", "attention"),
    *_block_rules("decoder.decoder_encoder.layer.{i}", "decoder_blocks.{i}", "attention"),
    Rule("decoder.decoder_norm.{w}", "decoder_norm.{w}"),
    Rule("decoder.decoder_pred.{w}", "decoder_pred.{w}"),
]
_DROP = ("mask_token", "relative_position_index")  # no effect on classification: see the module docstring


@dataclass(frozen=True)
class _Family:
    model_type: str
    families: tuple[str, ...]   # vitkit families searched for the closest registered model
    prefix: str                 # base-model prefix of *ForImageClassification tensor names
    eps: float                  # LayerNorm eps of vitkit's models of this family
    hf_eps: float               # transformers' default layer_norm_eps for this model_type
    target: Callable            # (config, keys, source) → (reference model name, vitkit config fields)
    to_vitkit: Callable         # (hf_state, config, vitkit cfg) → vitkit state


def _vit_fields(config: dict, source: str) -> dict:
    D = config.get("hidden_size", 768)
    return dict(img_size=_image_size(config), patch_size=_patch_size(config, source, 16),
                in_chans=config.get("num_channels", 3), embed_dim=D, depth=config.get("num_hidden_layers", 12),
                num_heads=config.get("num_attention_heads", 12),
                mlp_ratio=_mlp_ratio(D, config.get("intermediate_size", 3072), source),
                qkv_bias=config.get("qkv_bias", True), class_token=True, pos_embed="learn", global_pool="token",
                fc_norm=None, init_values=None, norm_eps=config.get("layer_norm_eps", 1e-12))


def _pooler_fields(config: dict, keys: set[str] | None, kind: str, source: str) -> dict:
    """A *Model's pooler (Linear + activation on the [CLS] output) → vitkit's pre-logits layer (Linear + tanh)."""
    pooler = kind == "base" and (keys is None or "pooler.dense.weight" in keys)
    if not pooler:
        return dict(head_hidden_size=None)
    if config.get("pooler_act", "tanh") != "tanh":
        raise CheckpointError(f"{source}: pooler_act={config['pooler_act']!r}; vitkit's pre-logits layer (which "
                              f"the pooler maps to) uses tanh")
    return dict(head_hidden_size=config.get("pooler_output_size") or config.get("hidden_size", 768))


def _vit_target(config, keys, source):
    kind = _architecture(config, keys, {"ViTForImageClassification": "classifier", "ViTModel": "base"}, source)
    fields = _vit_fields(config, source)
    fields.update(_pooler_fields(config, keys, kind, source), reg_tokens=0,
                  num_classes=_num_labels(config) if kind == "classifier" else 0)
    return "vit_base_patch16_224", fields


def _deit_target(config, keys, source):
    kind = _architecture(config, keys, {"DeiTForImageClassificationWithTeacher": "teacher",
                                        "DeiTForImageClassification": "classifier", "DeiTModel": "base"}, source)
    fields = _vit_fields(config, source)
    fields["num_classes"] = _num_labels(config) if kind != "base" else 0
    if kind == "teacher":
        return "deit_base_distilled_patch16_224", {**fields, "reg_tokens": 0, "head_hidden_size": None}
    # transformers' DeiT always has the distillation token; without the teacher head it is a register token.
    return "deit_base_patch16_224", {**fields, **_pooler_fields(config, keys, kind, source), "reg_tokens": 1}


def _mae_target(config, keys, source):
    _architecture(config, keys, {"ViTMAEForPreTraining": "pretraining"}, source)
    fields = _vit_fields(config, source)
    Dd = config.get("decoder_hidden_size", 512)
    fields.update(pos_embed="sincos", num_classes=0, head_hidden_size=None, reg_tokens=0, decoder_embed_dim=Dd,
                  decoder_depth=config.get("decoder_num_hidden_layers", 8),
                  decoder_num_heads=config.get("decoder_num_attention_heads", 16),
                  decoder_mlp_ratio=_mlp_ratio(Dd, config.get("decoder_intermediate_size", 2048), source),
                  mask_ratio=config.get("mask_ratio", 0.75), norm_pix_loss=config.get("norm_pix_loss", False))
    return "mae_vit_base_patch16_224", fields


def _renamer(rules):
    return lambda state, config, cfg: _rename_to_ours(state, rules, _DROP)


def _swin_target(config, keys, source):
    kind = _architecture(config, keys, {"SwinForImageClassification": "classifier", "SwinModel": "base"}, source)
    if config.get("use_absolute_embeddings", False):
        raise CheckpointError(f"{source}: use_absolute_embeddings=true; vitkit's Swin has no absolute position "
                              f"embeddings")
    img = _image_size(config)
    if not isinstance(img, int):
        raise CheckpointError(f"{source}: image_size {list(img)} is not square; transformers and vitkit shrink "
                              f"windows on small non-square maps differently, so vitkit reads square Swins only")
    D = config.get("embed_dim", 96)
    ratio = float(config.get("mlp_ratio", 4.0))
    return "swin_tiny_patch4_window7_224", dict(
        img_size=img, patch_size=_patch_size(config, source, 4), in_chans=config.get("num_channels", 3),
        num_classes=_num_labels(config) if kind == "classifier" else 0, embed_dim=D,
        depths=tuple(config.get("depths", (2, 2, 6, 2))), num_heads=tuple(config.get("num_heads", (3, 6, 12, 24))),
        window_size=config.get("window_size", 7), mlp_ratio=ratio, qkv_bias=config.get("qkv_bias", True),
        global_pool="avg")


BEIT_NON_SQUARE = ("transformers builds BEiT's relative-position index for a non-square grid transposed from the "
                   "original BEiT code (and timm, and vitkit), so the same weights give other outputs (measured: "
                   "logits 0.02-0.04 apart)")


def _beit_target(config, keys, source):
    kind = "mim" if keys is not None and "lm_head.weight" in keys else _architecture(
        config, keys, {"BeitForImageClassification": "classifier", "BeitModel": "base",
                       "BeitForMaskedImageModeling": "mim"}, source)
    img = _image_size(config)
    rel_pos = config.get("use_relative_position_bias", False) or config.get("use_shared_relative_position_bias", False)
    if rel_pos and not isinstance(img, int):
        raise CheckpointError(f"{source}: image_size {list(img)} is not square, and {BEIT_NON_SQUARE}; vitkit "
                              f"reads square BEiTs with relative position bias only. A square checkpoint can be "
                              f"loaded and then resized: vitkit.load_pretrained(path, img_size=(H, W))")
    D = config.get("hidden_size", 768)
    ls = config.get("layer_scale_init_value", 0.1)
    fields = dict(
        img_size=img, patch_size=_patch_size(config, source, 16),
        in_chans=config.get("num_channels", 3), num_classes=_num_labels(config) if kind == "classifier" else 0,
        embed_dim=D, depth=config.get("num_hidden_layers", 12), num_heads=config.get("num_attention_heads", 12),
        mlp_ratio=_mlp_ratio(D, config.get("intermediate_size", 3072), source), qkv_bias=True,
        use_abs_pos_emb=config.get("use_absolute_position_embeddings", False),
        use_rel_pos_bias=config.get("use_relative_position_bias", False),
        use_shared_rel_pos_bias=config.get("use_shared_relative_position_bias", False),
        init_values=ls if ls > 0 else None,
        global_pool="avg" if config.get("use_mean_pooling", True) else "token", use_fc_norm=None)
    if kind == "mim":  # the visual-token head; the tokenizer (BEiT's dVAE) is not part of the checkpoint
        return "mim_beit_base_patch16_224", {**fields, "num_classes": 0, "target": "tokens", "mask_token": True,
                                             "vocab_size": config.get("vocab_size", 8192)}
    return "beit_base_patch16_224", fields


# BeitForMaskedImageModeling: the base model under beit. → encoder., its own LayerNorm and lm_head → norm and head.
_BEIT_MIM_RULES = [
    Rule("beit.embeddings.mask_token", "encoder.mask_token"),
    *[Rule(f"beit.{r.hf}", f"encoder.{r.ours}") for r in _BEIT_RULES if not r.hf.startswith(("pooler", "classifier"))],
    Rule("layernorm.{w}", "norm.{w}"),
    Rule("lm_head.{w}", "head.{w}"),
]


def _beit_to_vitkit(state, config, cfg):
    from ..models.mim import MIMOptions
    if not isinstance(cfg, MIMOptions):
        return _rename_to_ours(state, _BEIT_RULES, _DROP)
    out = _rename_to_ours(state, _BEIT_MIM_RULES, ("relative_position_index",))
    D = cfg.embed_dim
    if "encoder.fc_norm.weight" not in out and cfg.global_pool == "avg":  # the pooled head's norm: not used by MIM,
        out["encoder.fc_norm.weight"], out["encoder.fc_norm.bias"] = torch.ones(D), torch.zeros(D)  # fresh
    out.setdefault("codebook.centroids", torch.zeros(cfg.vocab_size, cfg.patch_size ** 2 * cfg.in_chans))  # unfitted
    return out


def _convnext_target(config, keys, source):
    kind = _architecture(config, keys, {"ConvNextForImageClassification": "classifier", "ConvNextModel": "base"},
                         source)
    depths = tuple(config.get("depths", (3, 3, 9, 3)))
    dims = tuple(config.get("hidden_sizes", (96, 192, 384, 768)))
    if len(depths) != len(dims) or config.get("num_stages", len(depths)) != len(depths):
        raise CheckpointError(f"{source}: num_stages {config.get('num_stages')}, depths {list(depths)} and "
                              f"hidden_sizes {list(dims)} disagree")
    ls = config.get("layer_scale_init_value", 1e-6)
    return "convnext_tiny", dict(
        img_size=_image_size(config), in_chans=config.get("num_channels", 3),
        num_classes=_num_labels(config) if kind == "classifier" else 0, depths=depths, dims=dims,
        patch_size=_patch_size(config, source, 4), kernel_size=7, mlp_ratio=4.0,
        ls_init_value=ls if ls > 0 else None)


def _convnext_to_vitkit(state, config, cfg):
    """transformers' ConvNeXt MLP is Linear; a conv_mlp=True vitkit model holds the same weights as 1×1 convs."""
    out = _rename_to_ours(state, _CONVNEXT_RULES, _DROP)
    if cfg.conv_mlp:
        out = {k: v[:, :, None, None] if _is_mlp_weight(k) and v.ndim == 2 else v for k, v in out.items()}
    return out


def _is_mlp_weight(key: str) -> bool:
    return re.fullmatch(r"stages\.\d+\.blocks\.\d+\.mlp\.fc[12]\.weight", key) is not None


FAMILIES = {
    "vit": _Family("vit", ("vit",), "vit.", 1e-6, 1e-12, _vit_target, _renamer(_VIT_RULES)),
    "deit": _Family("deit", ("deit",), "deit.", 1e-6, 1e-12, _deit_target,
                    lambda s, c, cfg: _rename_to_ours(s, _DEIT_TEACHER_RULES if cfg.reg_tokens == 0 else _DEIT_RULES,
                                                      _DROP)),
    "swin": _Family("swin", ("swin",), "swin.", 1e-5, 1e-5, _swin_target, _renamer(_SWIN_RULES)),
    "beit": _Family("beit", ("beit", "mim"), "beit.", 1e-6, 1e-12, _beit_target, _beit_to_vitkit),
    "convnext": _Family("convnext", ("convnext",), "convnext.", 1e-6, 1e-12, _convnext_target, _convnext_to_vitkit),
    "vit_mae": _Family("vit_mae", ("mae",), "", 1e-6, 1e-12, _mae_target,
                       lambda s, c, cfg: _rename_to_ours(s, _MAE_RULES, ("relative_position_index",))),
}


def _family(config: dict, source) -> _Family:
    check_config(config, source)  # each field vitkit reads holds what transformers writes, or a CheckpointError
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        found = f"model_type {model_type!r}" if model_type else "no model_type"
        raise CheckpointError(f"{source}: config.json has {found}; vitkit reads the Hugging Face model types "
                              f"{', '.join(SUPPORTED)}")
    return FAMILIES[model_type]


# ---- writing -----------------------------------------------------------------------------------------------------
def write(model: nn.Module, model_name: str, out_dir: str | Path, classes: list[str] | None = None) -> Path:
    """Write `model` (built from `model_name`) as a transformers folder: config.json and model.safetensors.

    The folder loads with `transformers.<Arch>.from_pretrained(out_dir)` with no missing or unexpected tensors and
    gives vitkit's logits; <Arch> is recorded in config.json's `architectures`:
    ViTForImageClassification (vit_* and plain deit_*; ViTModel when the model has a pre-logits layer and no head),
    DeiTForImageClassification (a ViT with one register token, as read() makes of transformers' DeiT),
    DeiTForImageClassificationWithTeacher (deit_*_distilled_*), SwinForImageClassification,
    BeitForImageClassification, ConvNextForImageClassification. classes: label names for id2label.
    """
    from ..models.beit import Beit
    from ..models.convnext import ConvNeXt
    from ..models.deit import DistilledVisionTransformer
    from ..models.swin import SwinTransformer
    from ..models.vit import VisionTransformer

    cfg = getattr(model, "cfg", None)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, DistilledVisionTransformer):
        hf_config, rules, arch = _vit_config(cfg, model_name, distilled=True)
    elif isinstance(model, VisionTransformer):
        hf_config, rules, arch = _vit_config(cfg, model_name, distilled=False)
    elif isinstance(model, SwinTransformer):
        hf_config, rules, arch = _swin_config(cfg, model_name)
    elif isinstance(model, Beit):
        hf_config, rules, arch = _beit_config(cfg, model_name)
    elif isinstance(model, ConvNeXt):
        hf_config, rules, arch = _convnext_config(cfg, model_name)
        state = {k: v[:, :, 0, 0] if _is_mlp_weight(k) and v.ndim == 4 else v for k, v in state.items()}
    else:
        raise CheckpointError(f"{model_name} ({type(model).__name__}) has no Hugging Face transformers counterpart "
                              f"that vitkit writes; supported: ViT, DeiT, Swin, BEiT, ConvNeXt")
    num_classes = cfg.num_classes
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{len(classes)} class names given for a model with {num_classes} outputs")
    labels = list(classes) if classes is not None else [f"LABEL_{i}" for i in range(num_classes)]
    hf_state = _rename_to_hf(state, rules, model_name)
    prefix = FAMILIES[hf_config["model_type"]].prefix if arch.endswith(("Classification", "WithTeacher")) else ""
    heads = ("classifier.", "cls_classifier.", "distillation_classifier.")
    hf_state = {(k if k.startswith(heads) else prefix + k): v for k, v in hf_state.items()}
    act = "gelu_pytorch_tanh" if getattr(cfg, "act", "gelu") == "gelu_tanh" else "gelu"
    hf_config.update(architectures=[arch], hidden_act=act, id2label={str(i): n for i, n in enumerate(labels)},
                     label2id={n: i for i, n in enumerate(labels)}, vitkit_model=model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "model.safetensors", hf_state, metadata={"format": "pt"})
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    atomic_write(out / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return out


def _refuse(model_name: str, what: dict[str, bool], arch: str) -> None:
    bad = [k for k, v in what.items() if v]
    if bad:
        raise CheckpointError(f"{model_name} cannot be written as a transformers {arch}: it has {', '.join(bad)}, "
                              f"which {arch} does not")


def _img(size):
    return size if isinstance(size, int) else list(size)


def _vit_config(cfg, model_name: str, distilled: bool) -> tuple[dict, list[Rule], str]:
    pooler = bool(cfg.head_hidden_size)
    if distilled:
        model_type, arch, rules = "deit", "DeiTForImageClassificationWithTeacher", _DEIT_TEACHER_RULES
    elif cfg.reg_tokens == 1:
        model_type, rules = "deit", _DEIT_RULES
        arch = "DeiTModel" if pooler else "DeiTForImageClassification"
    else:
        model_type, rules = "vit", _VIT_RULES
        arch = "ViTModel" if pooler else "ViTForImageClassification"
    _refuse(model_name, {
        "no [CLS] token": not cfg.class_token,
        f"position embeddings {cfg.pos_embed!r} (not learned)": cfg.pos_embed != "learn",
        "mean pooling": cfg.global_pool != "token",
        "a LayerNorm after pooling (fc_norm)": bool(cfg.fc_norm),
        "LayerScale (init_values)": cfg.init_values is not None,
        f"{cfg.reg_tokens} register tokens": cfg.reg_tokens > (0 if distilled else 1),
        "a pre-logits layer and a classifier (transformers' pooler is only on the headless *Model)":
            pooler and cfg.num_classes > 0,
    }, arch)
    D = cfg.embed_dim
    config = dict(model_type=model_type, hidden_size=D, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                  intermediate_size=int(D * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias, image_size=_img(cfg.img_size),
                  patch_size=cfg.patch_size, num_channels=cfg.in_chans, layer_norm_eps=cfg.norm_eps)
    if pooler:
        config.update(pooler_output_size=cfg.head_hidden_size, pooler_act="tanh")
    return config, rules, arch


def _swin_config(cfg, model_name: str) -> tuple[dict, list[Rule], str]:
    arch = "SwinForImageClassification"
    _refuse(model_name, {"no pooling (global_pool='')": cfg.global_pool != "avg",
                         f"a non-square image size {cfg.img_size}": not isinstance(cfg.img_size, int)
                         and cfg.img_size[0] != cfg.img_size[1]}, arch)
    return dict(model_type="swin", image_size=_pair(cfg.img_size)[0], patch_size=cfg.patch_size,
                num_channels=cfg.in_chans, embed_dim=cfg.embed_dim, depths=list(cfg.depths),
                num_heads=list(cfg.num_heads), window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias, use_absolute_embeddings=False, layer_norm_eps=FAMILIES["swin"].eps), \
        _SWIN_RULES, arch


def _beit_config(cfg, model_name: str) -> tuple[dict, list[Rule], str]:
    arch = "BeitForImageClassification"
    use_fc_norm = cfg.global_pool == "avg" if cfg.use_fc_norm is None else cfg.use_fc_norm
    square = isinstance(cfg.img_size, int) or cfg.img_size[0] == cfg.img_size[1]
    _refuse(model_name, {"no q/v biases (qkv_bias=False)": not cfg.qkv_bias,
                         "a LayerNorm placement other than transformers' (use_fc_norm)":
                             use_fc_norm != (cfg.global_pool == "avg"),
                         f"a non-square image size {cfg.img_size} with relative position bias ({BEIT_NON_SQUARE})":
                             not square and (cfg.use_rel_pos_bias or cfg.use_shared_rel_pos_bias)}, arch)
    D = cfg.embed_dim
    return dict(model_type="beit", hidden_size=D, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                intermediate_size=int(D * cfg.mlp_ratio), image_size=_img(cfg.img_size), patch_size=cfg.patch_size,
                num_channels=cfg.in_chans, use_absolute_position_embeddings=cfg.use_abs_pos_emb,
                use_relative_position_bias=cfg.use_rel_pos_bias,
                use_shared_relative_position_bias=cfg.use_shared_rel_pos_bias,
                layer_scale_init_value=cfg.init_values or 0.0, use_mean_pooling=cfg.global_pool == "avg",
                layer_norm_eps=FAMILIES["beit"].eps), _BEIT_RULES, arch


def _convnext_config(cfg, model_name: str) -> tuple[dict, list[Rule], str]:
    arch = "ConvNextForImageClassification"
    _refuse(model_name, {f"kernel_size {cfg.kernel_size} (transformers: 7)": cfg.kernel_size != 7,
                         f"mlp_ratio {cfg.mlp_ratio} (transformers: 4)": cfg.mlp_ratio != 4}, arch)
    return dict(model_type="convnext", num_channels=cfg.in_chans, patch_size=cfg.patch_size,
                num_stages=len(cfg.depths), hidden_sizes=list(cfg.dims), depths=list(cfg.depths),
                layer_scale_init_value=cfg.ls_init_value or 0.0, image_size=_pair(cfg.img_size)[0],
                layer_norm_eps=FAMILIES["convnext"].eps), _CONVNEXT_RULES, arch
