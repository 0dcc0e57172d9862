"""torchvision state dicts → vitkit keys: ViT (vit_b_16, vit_b_32, vit_l_16, ...), Swin (swin_t, swin_s, swin_b),
ConvNeXt (convnext_tiny, ...) and ResNet (resnet18, resnet50, ...).

The architectures are the same functions as vitkit's (= timm's); only the names differ:

ViT (torchvision/models/vision_transformer.py; LayerNorm eps 1e-6, exact GELU, as vitkit's):
    conv_proj                                        → patch_embed.proj
    class_token, encoder.pos_embedding               → cls_token, pos_embed
    encoder.layers.encoder_layer_{i}.ln_1 / ln_2     → blocks.i.norm1 / norm2
        .self_attention.in_proj_weight|bias          → blocks.i.attn.qkv   (nn.MultiheadAttention packs q, k, v
        .self_attention.out_proj                     → blocks.i.attn.proj   in timm's order)
        .mlp.0 / .mlp.3 (before torchvision 0.13: .mlp.linear_1 / .linear_2) → blocks.i.mlp.fc1 / fc2
    encoder.ln                                       → norm
    heads.head, heads.pre_logits (representation_size) → head, pre_logits.fc
  The number of heads is not stored; it comes from the model name, or from the standard size with that width.
  The conv-stem variant (conv_stem_configs) is not supported.

Swin V1 (swin_transformer.py; LayerNorm eps 1e-5, exact GELU):
    features.0.0 / features.0.2                      → patch_embed.proj / patch_embed.norm
    features.{2s+1}.{j}.norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, norm2
                                                     → layers.s.blocks.j.(same)
    features.{2s+1}.{j}.mlp.0 / mlp.3                → layers.s.blocks.j.mlp.fc1 / fc2
    features.{2s}.reduction / norm   (s ≥ 1)         → layers.s.downsample.reduction / norm
    norm, head                                       → norm, head.fc
  relative_position_index (a saved buffer in torchvision, recomputed by vitkit) is checked against the
  Swin formula and dropped. PatchMerging concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
  x[1::2, 1::2] (row, column), the order vitkit's uses; the shifted-window mask uses the same three regions
  per side (masked with -100 before the softmax where vitkit uses -inf: the weights differ by < e^-100).
  torchvision pads a map that windows do not tile and keeps the window at 7 where vitkit shrinks it to the
  map; at 224×224 (the released weights) neither happens and the two are the same function. The image
  size is not stored; vitkit's default 224 is used. Swin V2 (swin_v2_t) is not supported.

ConvNeXt (convnext.py; LayerNorm eps 1e-6, exact GELU):
    features.0.0 / features.0.1                      → stem.0 / stem.1
    features.{2s+1}.{j}.block.0 / block.2 / block.3 / block.5 → stages.s.blocks.j.conv_dw / norm / mlp.fc1 / mlp.fc2
    features.{2s+1}.{j}.layer_scale (C, 1, 1)        → stages.s.blocks.j.gamma (C,)
    features.{2s}.0 / features.{2s}.1   (s ≥ 1)      → stages.s.downsample.0 / downsample.1
    classifier.0 / classifier.2                      → head.norm / head.fc  (LayerNorm2d on the pooled 1×1 map
                                                        is LayerNorm on the pooled vector)

ResNet (resnet.py): the keys are timm's and vitkit's already. BatchNorm `num_batches_tracked` counters,
absent from files saved by old torchvision versions, are filled with 0 (they do not affect eval). Wide
ResNets and ResNeXt (other bottleneck widths, grouped convs) are not supported. Because the keys equal
timm's, `detect` does not claim ResNet files; `read(path, 'resnet50')` converts them.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ..registry import model_config
from .converted import Converted, registered_family, resolve_name
from .io import CheckpointError, read_state_dict

# torchvision builder name → the registered vitkit model with the same architecture.
ARCHS = {
    "vit_b_16": "vit_base_patch16_224", "vit_b_32": "vit_base_patch32_224", "vit_l_16": "vit_large_patch16_224",
    "vit_l_32": "vit_large_patch32_224", "vit_h_14": "vit_huge_patch14_224",
    "swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "convnext_tiny": "convnext_tiny",
    "resnet18": "resnet18", "resnet50": "resnet50",
}
FAMILY_KEYS = {  # what each family's torchvision keys look like, for messages
    "vit": "conv_proj.weight, encoder.layers.encoder_layer_0...",
    "swin": "features.1.0.attn.relative_position_bias_table, ...",
    "convnext": "features.1.0.block.0.weight, features.1.0.layer_scale, classifier.2.weight",
    "resnet": "conv1.weight, layer1.0.conv1.weight, fc.weight",
}


# ---- the dialect contract --------------------------------------------------------------------------------------
def detect(path: str | Path) -> bool:
    """A state dict whose keys are torchvision's ViT, Swin or ConvNeXt ones (ResNet keys equal timm's: not
    claimed). Reads key names only: the safetensors header, or a zip pickle memory-mapped."""
    try:
        keys = _keys(Path(path))
    except Exception:  # any file we cannot list is not ours to claim
        return False
    return family_of(keys) in ("vit", "swin", "convnext")


def read(path: str | Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted:
    """The torchvision weights under vitkit's keys, and the registered model (plus overrides) they fit.

    name: a torchvision architecture name ('vit_b_16', 'swin_t', 'convnext_tiny', 'resnet50', ...) or a
    registered vitkit name; it must have the file's architecture (the number of classes, and for ViT the
    image size, may differ). None: inferred from the shapes.
    trust_pickle: let a .pth that needs arbitrary code to unpickle be loaded (see weights.io).
    """
    path = Path(path)
    return convert_state_dict(read_state_dict(path, trust_pickle=trust_pickle), name, source=str(path))


def convert_state_dict(state: dict[str, Tensor], name: str | None = None, *, source: str = "state dict") -> Converted:
    """`read` on a state dict already in memory (any device, meta included)."""
    family = family_of(state)
    if family is None:
        some = ", ".join(list(state)[:5]) + (" …" if len(state) > 5 else "")
        raise CheckpointError(f"{source} is not a torchvision ViT, Swin, ConvNeXt or ResNet state dict; its keys "
                              f"begin {some or '(none)'}")
    vitkit_name = ARCHS.get(name, name) if name is not None else None
    if vitkit_name is not None:
        wanted = registered_family(vitkit_name, Path(source))
        if wanted != family:
            raise CheckpointError(f"{source} is a torchvision {family} state dict (keys like {FAMILY_KEYS[family]}), "
                                  f"but {name!r} is a {wanted} model; pass the matching name, or none to infer it")
    try:
        return _CONVERTERS[family](dict(state), vitkit_name, source)
    except KeyError as e:  # a tensor the architecture needs is not there
        raise CheckpointError(f"{source} is a torchvision {family} state dict without {e.args[0]!r}, which that "
                              f"architecture has; the file is incomplete or from another model") from None
    except CheckpointError:
        raise
    except (ValueError, IndexError, RuntimeError, ZeroDivisionError) as e:  # tensors of another rank or size
        raise CheckpointError(f"{source}: its tensors' shapes do not fit together as a torchvision {family} "
                              f"({type(e).__name__}: {e}); the file is damaged or holds another model") from e


def family_of(keys) -> str | None:
    """'vit', 'swin', 'convnext', 'resnet' or None, from torchvision key names."""
    keys = set(keys)
    if "class_token" in keys and any(k.startswith("encoder.layers.encoder_layer_") for k in keys):
        return "vit"
    if "features.0.0.weight" in keys:
        if any(k.endswith("relative_position_bias_table") or ".cpb_mlp." in k for k in keys):
            return "swin"
        if any(k.endswith(".layer_scale") for k in keys) and "classifier.2.weight" in keys:
            return "convnext"
    if {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"} <= keys:
        return "resnet"
    return None


def _keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    if not path.is_file():
        return []
    mmap = zipfile.is_zipfile(path)  # torch's zip format can be memory-mapped: no tensor data is read
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    for key in ("state_dict", "model", "module", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return [k.removeprefix("module.") for k in obj] if isinstance(obj, dict) else []


# ---- shared pieces ----------------------------------------------------------------------------------------------
class _Renamer:
    """Moves tensors from the torchvision dict to vitkit keys; whatever is left at the end is an error."""

    def __init__(self, state: dict[str, Tensor], source: str):
        self.src, self.out, self.source = state, {}, source

    def move(self, old: str, new: str, fn=None) -> None:
        if old not in self.src:
            raise CheckpointError(f"{self.source} has no {old!r}, which this torchvision architecture needs; the file "
                                  f"is incomplete or from another model")
        t = self.src.pop(old)
        self.out[new] = fn(t) if fn else t

    def module(self, old: str, new: str, params=("weight", "bias")) -> None:
        for p in params:
            if f"{old}.{p}" in self.src:
                self.move(f"{old}.{p}", f"{new}.{p}")

    def finish(self) -> dict[str, Tensor]:
        if self.src:
            left = list(self.src)
            raise CheckpointError(f"{self.source} has {len(left)} key(s) vitkit does not know where to put: "
                                  + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))
        return self.out


def _indices(state, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (a regex with one group) over the keys."""
    return sorted({int(m[1]) for k in state if (m := re.match(pattern, k))})


# ---- ViT --------------------------------------------------------------------------------------------------------
def _vit(state: dict[str, Tensor], name: str | None, source: str) -> Converted:
    from ..models.vit import VIT_SIZES
    if any(k.startswith("conv_proj.") and k not in ("conv_proj.weight", "conv_proj.bias") for k in state):
        raise CheckpointError(f"{source} is a torchvision ViT with a convolutional stem (conv_stem_configs), which "
                              f"vitkit does not support")
    r = _Renamer(state, source)
    proj = state["conv_proj.weight"]  # (D, C, P, P)
    D, C, P = proj.shape[0], proj.shape[1], proj.shape[-1]
    layers = _indices(state, r"encoder\.layers\.encoder_layer_(\d+)\.")
    r.module("conv_proj", "patch_embed.proj")
    r.move("class_token", "cls_token")
    pos = state["encoder.pos_embedding"]
    r.move("encoder.pos_embedding", "pos_embed")
    mlp = None
    for i in layers:
        o, n = f"encoder.layers.encoder_layer_{i}.", f"blocks.{i}."
        r.module(o + "ln_1", n + "norm1")
        r.move(o + "self_attention.in_proj_weight", n + "attn.qkv.weight")
        r.move(o + "self_attention.in_proj_bias", n + "attn.qkv.bias")
        r.module(o + "self_attention.out_proj", n + "attn.proj")
        r.module(o + "ln_2", n + "norm2")
        first, second = ("mlp.linear_1", "mlp.linear_2") if o + "mlp.linear_1.weight" in state else ("mlp.0", "mlp.3")
        mlp = state[o + first + ".weight"].shape[0]
        r.module(o + first, n + "mlp.fc1")
        r.module(o + second, n + "mlp.fc2")
    r.module("encoder.ln", "norm")
    head_hidden = state["heads.pre_logits.weight"].shape[0] if "heads.pre_logits.weight" in state else None
    r.module("heads.pre_logits", "pre_logits.fc")
    num_classes = state["heads.head.weight"].shape[0]
    r.module("heads.head", "head")
    out = r.finish()

    side = int(round((pos.shape[1] - 1) ** 0.5))
    if side * side != pos.shape[1] - 1:
        raise CheckpointError(f"{source}: encoder.pos_embedding has {pos.shape[1] - 1} patch positions, not a square "
                              f"grid")
    if name is not None:
        heads = model_config(name).num_heads
    else:
        heads = next((h for w, _, h, m in VIT_SIZES.values() if (w, m) == (D, mlp)), None)
        if heads is None:
            raise CheckpointError(f"{source}: torchvision does not store the number of attention heads, and width {D} "
                                  f"with MLP width {mlp} is not a standard ViT size; pass the vitkit model name")
    arch = dict(embed_dim=D, depth=len(layers), num_heads=heads, mlp_ratio=mlp / D, patch_size=P, in_chans=C,
                img_size=side * P, num_classes=num_classes, head_hidden_size=head_hidden)
    default = next((n for n in ARCHS.values() if n.startswith("vit_") and (model_config(n).embed_dim,
                    model_config(n).patch_size) == (D, P)), "vit_base_patch16_224")
    return _converted(name, default, arch, out, source, free={"img_size", "num_classes", "head_hidden_size",
                                                              "in_chans"})


# ---- Swin -------------------------------------------------------------------------------------------------------
def _swin_index(window: int) -> Tensor:
    """The relative-position index of a window×window window, as Swin (and torchvision) compute it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten()


def _swin(state: dict[str, Tensor], name: str | None, source: str) -> Converted:
    if any(".cpb_mlp." in k or k.endswith("logit_scale") for k in state):
        raise CheckpointError(f"{source} is a torchvision Swin V2 state dict (cpb_mlp, logit_scale); vitkit reads "
                              f"Swin V1 (swin_t, swin_s, swin_b) only")
    r = _Renamer(state, source)
    proj = state["features.0.0.weight"]
    r.module("features.0.0", "patch_embed.proj")
    r.module("features.0.2", "patch_embed.norm")
    stage_ids = [i for i in _indices(state, r"features\.(\d+)\.") if i % 2 == 1]
    depths, heads, window, mlp = [], [], None, None
    for s, f in enumerate(stage_ids):
        if s > 0:
            r.module(f"features.{f - 1}.norm", f"layers.{s}.downsample.norm")
            r.module(f"features.{f - 1}.reduction", f"layers.{s}.downsample.reduction", params=("weight",))
        blocks = _indices(state, rf"features\.{f}\.(\d+)\.")
        depths.append(len(blocks))
        for j in blocks:
            o, n = f"features.{f}.{j}.", f"layers.{s}.blocks.{j}."
            table = state[o + "attn.relative_position_bias_table"]  # ((2W-1)², heads)
            window = (int(round(table.shape[0] ** 0.5)) + 1) // 2
            if j == blocks[0]:
                heads.append(table.shape[1])
            index = state.pop(o + "attn.relative_position_index", None)
            if index is not None and index.device.type != "meta" and not torch.equal(
                    index.flatten().long(), _swin_index(window)):
                raise CheckpointError(f"{source}: {o}attn.relative_position_index is not Swin's index for a "
                                      f"{window}×{window} window")
            for m in ("norm1", "attn.qkv", "attn.proj", "norm2"):
                r.module(o + m, n + m)
            r.move(o + "attn.relative_position_bias_table", n + "attn.relative_position_bias_table")
            mlp = state[o + "mlp.0.weight"].shape[0] / state[o + "mlp.0.weight"].shape[1]
            r.module(o + "mlp.0", n + "mlp.fc1")
            r.module(o + "mlp.3", n + "mlp.fc2")
    r.module("norm", "norm")
    num_classes = state["head.weight"].shape[0]
    r.module("head", "head.fc")
    out = r.finish()
    arch = dict(embed_dim=proj.shape[0], patch_size=proj.shape[-1], in_chans=proj.shape[1], depths=tuple(depths),
                num_heads=tuple(heads), window_size=window, mlp_ratio=mlp, num_classes=num_classes)
    default = "swin_base_patch4_window7_224" if proj.shape[0] == 128 else (
        "swin_small_patch4_window7_224" if sum(depths) > 12 else "swin_tiny_patch4_window7_224")
    return _converted(name, default, arch, out, source, free={"num_classes", "in_chans"})


# ---- ConvNeXt ---------------------------------------------------------------------------------------------------
def _convnext(state: dict[str, Tensor], name: str | None, source: str) -> Converted:
    r = _Renamer(state, source)
    stem = state["features.0.0.weight"]
    r.module("features.0.0", "stem.0")
    r.module("features.0.1", "stem.1")
    stage_ids = [i for i in _indices(state, r"features\.(\d+)\.") if i % 2 == 1]
    depths, dims, kernel, mlp = [], [], None, None
    for s, f in enumerate(stage_ids):
        if s > 0:
            r.module(f"features.{f - 1}.0", f"stages.{s}.downsample.0")
            r.module(f"features.{f - 1}.1", f"stages.{s}.downsample.1")
        blocks = _indices(state, rf"features\.{f}\.(\d+)\.")
        depths.append(len(blocks))
        for j in blocks:
            o, n = f"features.{f}.{j}.", f"stages.{s}.blocks.{j}."
            dw = state[o + "block.0.weight"]  # (C, 1, k, k)
            kernel, dim = dw.shape[-1], dw.shape[0]
            mlp = state[o + "block.3.weight"].shape[0] / dim
            r.module(o + "block.0", n + "conv_dw")
            r.module(o + "block.2", n + "norm")
            r.module(o + "block.3", n + "mlp.fc1")
            r.module(o + "block.5", n + "mlp.fc2")
            r.move(o + "layer_scale", n + "gamma", lambda t: t.reshape(-1))  # (C, 1, 1) → (C,)
        dims.append(dim)
    r.module("classifier.0", "head.norm")
    num_classes = state["classifier.2.weight"].shape[0]
    r.module("classifier.2", "head.fc")
    out = r.finish()
    arch = dict(depths=tuple(depths), dims=tuple(dims), patch_size=stem.shape[-1], in_chans=stem.shape[1],
                kernel_size=kernel, mlp_ratio=mlp, num_classes=num_classes)
    converted = _converted(name, "convnext_tiny", arch, out, source, free={"num_classes", "in_chans", "conv_mlp"})
    if model_config(converted.model_name, **converted.overrides).conv_mlp:  # its MLP is 1×1 convs: (out, in, 1, 1)
        for k, v in converted.state.items():
            if ".mlp.fc" in k and k.endswith(".weight"):
                converted.state[k] = v[:, :, None, None]
    return converted


# ---- ResNet -----------------------------------------------------------------------------------------------------
def _resnet(state: dict[str, Tensor], name: str | None, source: str) -> Converted:
    bottleneck = "layer1.0.conv3.weight" in state
    stages = _indices(state, r"layer(\d+)\.")
    layers = tuple(len(_indices(state, rf"layer{i}\.(\d+)\.")) for i in stages)
    channels = tuple(state[f"layer{i}.0.conv1.weight"].shape[0] for i in stages)
    for i, planes in zip(stages, channels):
        conv2 = state[f"layer{i}.0.conv2.weight"]
        if conv2.shape[1] != conv2.shape[0]:
            raise CheckpointError(f"{source}: layer{i} has grouped 3×3 convs (ResNeXt), which vitkit's ResNet lacks")
        if bottleneck and state[f"layer{i}.0.conv3.weight"].shape[0] != 4 * planes:
            raise CheckpointError(f"{source}: layer{i}'s bottleneck is not 4× narrower than its output (a wide "
                                  f"ResNet), which vitkit's ResNet does not support")
    out = dict(state)
    for k in [k for k in state if k.endswith(".running_mean")]:  # counters old torchvision files lack
        out.setdefault(k.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    arch = dict(block="bottleneck" if bottleneck else "basic", layers=layers, channels=channels,
                stem_width=state["conv1.weight"].shape[0], in_chans=state["conv1.weight"].shape[1],
                num_classes=state["fc.weight"].shape[0])
    return _converted(name, "resnet50" if bottleneck else "resnet18", arch, out, source,
                      free={"num_classes", "in_chans"})


def _converted(name, default, arch, state, source, free) -> Converted:
    describe = ", ".join(f"{k} {v}" for k, v in arch.items() if k not in free and v is not None)
    model_name, overrides = resolve_name(name, default, arch, Path(source), describe, free=frozenset(free))
    return Converted(model_name, state, overrides, None, "torchvision")


_CONVERTERS = {"vit": _vit, "swin": _swin, "convnext": _convnext, "resnet": _resnet}
