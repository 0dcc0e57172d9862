"""The original JAX/Flax ViT release (google-research/vision_transformer, big_vision): .npz → vitkit keys.

An .npz holds one array per Flax parameter, named by its path in the module tree:

    embedding/kernel                      (P, P, C, D)  patch projection, HWIO → patch_embed.proj (D, C, P, P)
    cls                                   (1, 1, D)                              → cls_token
    Transformer/posembed_input/pos_embedding  (1, N, D)  (big_vision: pos_embedding) → pos_embed
    Transformer/encoderblock_{i}/
        LayerNorm_0/scale|bias                                                  → blocks.i.norm1
        MultiHeadDotProductAttention_1/{query,key,value}/kernel  (D, heads, hd)  → blocks.i.attn.qkv (fused, q k v)
                                        /{query,key,value}/bias   (heads, hd)
                                        /out/kernel (heads, hd, D), out/bias    → blocks.i.attn.proj
        LayerNorm_2/scale|bias                                                  → blocks.i.norm2
        MlpBlock_3/Dense_0|1/kernel (in, out), bias                             → blocks.i.mlp.fc1|fc2
    Transformer/encoder_norm/scale|bias                                         → norm
    pre_logits/kernel|bias  (the representation layer of the i21k releases)     → pre_logits.fc
    head/kernel|bias                                                            → head

Block naming. The first release was written with the pre-Linen Flax API, which numbers sub-modules in one
sequence (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3); Linen numbers each type on
its own (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0), as big_vision and later
vit_jax files do. timm's loader reads the first scheme for 'Transformer/posembed_input' files and the second
for big_vision ones; we read whichever a file has. Also read: the 'opt/target/' and 'params/' prefixes,
big_vision's stacked ('scanned') blocks 'Transformer/encoderblock/...' with a leading depth axis, and models
without a [CLS] token (classifier 'gap': encoder norm, then the mean of the tokens).

Hybrids (R50+ViT-B/16, R26+ViT-S/32): the BiT ResNet keys map to `patch_embed.backbone`:

    conv_root/kernel, gn_root/scale|bias                → stem.conv, stem.norm
    block{s+1}/unit{u+1}/conv{r}/kernel, gn{r}/...      → stages.s.blocks.u.conv{r}, norm{r}
    block{s+1}/unit{u+1}/conv_proj/kernel, gn_proj/...  → stages.s.blocks.u.downsample.conv, .norm
    embedding/kernel (1, 1, C_r, D)                     → patch_embed.proj (the 1×1 projection)

The file does not record GroupNorm's group count; the release uses 32 (vitkit's default).

Not read: attention-pool (MAP) heads and files without a learned position embedding (big_vision's
sin-cos models); both raise a CheckpointError that says so.

The model is inferred from the shapes: width, depth, heads, MLP width, patch size, image size (from the
position-embedding length, square), classes, representation size, and the backbone for hybrids. The
registered name closest to it is chosen (vit_{size}_patch{P}_{224|384}, or vit_small_r26_s32_224 for
hybrids) and every difference goes into `Converted.overrides`. A `name` you pass must describe the same
architecture; only the image size, number of classes, representation size and input channels may differ.

The MLPs run the tanh approximation of GELU (`act='gelu_tanh'`), as the release computes: its Flax code calls
`nn.gelu`, whose default is `approximate=True`. timm's npz loader keeps timm's exact GELU, which moves the logits
by about 5e-4 from the release's (tests/test_jax_weights.py, against a Flax forward).

Arrays are read with numpy.load(allow_pickle=False): nothing in the file is executed.
"""
from __future__ import annotations

import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..registry import list_models, model_config
from .converted import Converted, registered_family, resolve_name
from .io import CheckpointError

PREFIXES = ("", "opt/target/", "params/", "params/img/")  # where releases put the model's parameters
# Block sub-module names: (attention, second LayerNorm, MLP), by Flax API.
NAMINGS = {
    "pre-Linen (the original release)": ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "Linen (big_vision, later releases)": ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}
# Config fields a checkpoint may change on the named model; every other field must agree with the file.


# ---- the dialect contract --------------------------------------------------------------------------------------
def detect(path: str | Path) -> bool:
    """An .npz (a zip of .npy files) holding a ViT's 'embedding/kernel' and 'Transformer/...' arrays.

    Reads the zip's table of contents only, never the arrays."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            keys = {n.removesuffix(".npy") for n in z.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError):  # ValueError: member names that are not UTF-8
        return False
    return any(f"{p}embedding/kernel" in keys for p in PREFIXES) and any("Transformer/" in k for k in keys)


def read(path: str | Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted:
    """The .npz's weights under vitkit's keys, and the registered model (plus overrides) they fit.

    name: a registered vitkit model name to load into; it must have the file's architecture (the image size,
    classes, representation size and input channels may differ, and go into the overrides). None: inferred.
    trust_pickle: ignored; .npz files are read without pickle, always.
    """
    path = Path(path)
    arrays = load_npz(path)
    prefix = next((p for p in PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(_not_vit(path, arrays, "embedding/kernel (the patch projection)"))
    w = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    try:
        return _Reader(path, w).convert(name)
    except CheckpointError:
        raise
    except (ValueError, IndexError, RuntimeError) as e:  # an array of another rank or size than its neighbours
        raise CheckpointError(f"{path}: its arrays' shapes do not fit together as a JAX ViT ({type(e).__name__}: "
                              f"{e}); the file is damaged or holds another model") from e


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read with allow_pickle=False; a CheckpointError for anything else."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .npz file inside it")
    with open(path, "rb") as f:  # numpy takes any other start for a pickle, and suggests trusting it
        if not f.read(4) in (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUM"):
            raise CheckpointError(f"{path} does not begin as an .npz (a zip archive of .npy arrays) does; it is "
                                  f"damaged, or another kind of file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path} is a single .npy array, not an .npz of named parameters")
        with npz:
            return {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise CheckpointError(f"{path} could not be read as an .npz without pickle ({type(e).__name__}: {e}); it "
                              f"is not a JAX release file, or it is truncated or holds Python objects") from e


def _not_vit(path: Path, arrays: dict, missing: str) -> str:
    some = ", ".join(sorted(arrays)[:6]) + (" …" if len(arrays) > 6 else "")
    return (f"{path} is an .npz but not a JAX ViT checkpoint: it has no {missing}. It holds {len(arrays)} "
            f"array(s): {some or 'none'}")


# ---- conversion ------------------------------------------------------------------------------------------------
def _t(a: np.ndarray) -> Tensor:
    if a.dtype.kind not in "fiu":
        raise CheckpointError(f"array of dtype {a.dtype} (bfloat16 saved by JAX?); re-save the .npz as float32")
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.float() if t.is_floating_point() else t


def _conv(kernel: np.ndarray) -> Tensor:
    """HWIO (Flax) → OIHW (PyTorch)."""
    return _t(kernel).permute(3, 2, 0, 1).contiguous()


def _dense(kernel: np.ndarray) -> Tensor:
    """(in, out) (Flax) → (out, in) (PyTorch)."""
    return _t(kernel).T.contiguous()


class _Reader:
    """One file's arrays (prefix removed); `convert` takes them, and complains about any it did not use."""

    def __init__(self, path: Path, w: dict[str, np.ndarray]):
        self.path, self.w, self.used = path, w, set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.w:
            raise CheckpointError(f"{self.path} has no array {key!r}, which a JAX ViT of this layout needs; the file "
                                  f"is incomplete or from another model")
        self.used.add(key)
        return self.w[key]

    def has(self, key: str) -> bool:
        return key in self.w

    # -- the encoder blocks -----------------------------------------------------------------------------------
    def _block_layout(self) -> tuple[int, str, bool, tuple[str, str, str]]:
        """(depth, block prefix pattern, scanned, naming)."""
        scanned = self.has("Transformer/encoderblock/LayerNorm_0/scale")
        if scanned:
            depth = self.w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
            pattern = "Transformer/encoderblock/"
        else:
            ids = {int(m[1]) for k in self.w if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
            if not ids:
                raise CheckpointError(_not_vit(self.path, self.w, "encoder blocks ('Transformer/encoderblock_0/...')"))
            depth = max(ids) + 1
            if ids != set(range(depth)):
                raise CheckpointError(f"{self.path} has encoder blocks {sorted(ids)}: some are missing")
            pattern = "Transformer/encoderblock_{i}/"
        first = pattern.format(i=0)
        for naming in NAMINGS.values():
            if self.has(f"{first}{naming[2]}/Dense_0/kernel"):
                return depth, pattern, scanned, naming
        found = sorted({k[len(first):].split("/")[0] for k in self.w if k.startswith(first)})
        raise CheckpointError(f"{self.path}: block 0 has sub-modules {found}, neither naming vitkit reads: "
                              + "; ".join(f"{k}: {', '.join(v)}" for k, v in NAMINGS.items()))

    def _blocks(self, state: dict[str, Tensor]) -> dict:
        depth, pattern, scanned, (mha, ln2, mlp) = self._block_layout()
        dims = {}
        for i in range(depth):
            p = pattern.format(i=i)

            def get(key: str) -> np.ndarray:
                a = self.take(p + key)
                return a[i] if scanned else a

            q = get(f"{mha}/query/kernel")  # (D, heads, hd)
            D, heads, hd = q.shape
            dims = {"depth": depth, "num_heads": heads, "mlp": get(f"{mlp}/Dense_0/kernel").shape[1]}
            b = f"blocks.{i}."
            state[b + "norm1.weight"] = _t(get("LayerNorm_0/scale"))
            state[b + "norm1.bias"] = _t(get("LayerNorm_0/bias"))
            kernels = [q if n == "query" else get(f"{mha}/{n}/kernel") for n in ("query", "key", "value")]
            state[b + "attn.qkv.weight"] = torch.cat([_t(k.reshape(D, heads * hd)).T for k in kernels])  # (3D, D)
            state[b + "attn.qkv.bias"] = torch.cat([_t(get(f"{mha}/{n}/bias").reshape(-1))
                                                    for n in ("query", "key", "value")])
            state[b + "attn.proj.weight"] = _t(get(f"{mha}/out/kernel").reshape(heads * hd, D)).T.contiguous()
            state[b + "attn.proj.bias"] = _t(get(f"{mha}/out/bias"))
            state[b + "norm2.weight"], state[b + "norm2.bias"] = _t(get(f"{ln2}/scale")), _t(get(f"{ln2}/bias"))
            for r in range(2):
                state[b + f"mlp.fc{r + 1}.weight"] = _dense(get(f"{mlp}/Dense_{r}/kernel"))
                state[b + f"mlp.fc{r + 1}.bias"] = _t(get(f"{mlp}/Dense_{r}/bias"))
        return dims

    # -- the hybrid's ResNet --------------------------------------------------------------------------------------
    def _backbone(self, state: dict[str, Tensor]) -> dict:
        pre = "patch_embed.backbone."
        stem = self.take("conv_root/kernel")
        state[pre + "stem.conv.weight"] = _conv(stem)
        state[pre + "stem.norm.weight"] = _t(self.take("gn_root/scale")).reshape(-1)
        state[pre + "stem.norm.bias"] = _t(self.take("gn_root/bias")).reshape(-1)
        units: dict[int, set[int]] = {}
        for k in self.w:
            if m := re.match(r"block(\d+)/unit(\d+)/", k):
                units.setdefault(int(m[1]), set()).add(int(m[2]))
        layers, channels = [], []
        for s in range(1, len(units) + 1):
            if s not in units or units[s] != set(range(1, len(units[s]) + 1)):
                raise CheckpointError(f"{self.path}: the hybrid's ResNet stages/units are not numbered 1..n: "
                                      f"{ {k: sorted(v) for k, v in sorted(units.items())} }")
            layers.append(len(units[s]))
            for u in range(1, layers[-1] + 1):
                bp, b = f"block{s}/unit{u}/", f"{pre}stages.{s - 1}.blocks.{u - 1}."
                for r in (1, 2, 3):
                    state[b + f"conv{r}.weight"] = _conv(self.take(f"{bp}conv{r}/kernel"))
                    state[b + f"norm{r}.weight"] = _t(self.take(f"{bp}gn{r}/scale")).reshape(-1)
                    state[b + f"norm{r}.bias"] = _t(self.take(f"{bp}gn{r}/bias")).reshape(-1)
                if self.has(f"{bp}conv_proj/kernel"):
                    state[b + "downsample.conv.weight"] = _conv(self.take(f"{bp}conv_proj/kernel"))
                    state[b + "downsample.norm.weight"] = _t(self.take(f"{bp}gn_proj/scale")).reshape(-1)
                    state[b + "downsample.norm.bias"] = _t(self.take(f"{bp}gn_proj/bias")).reshape(-1)
            channels.append(self.w[f"block{s}/unit1/conv3/kernel"].shape[-1])
        return {"backbone_layers": tuple(layers), "backbone_channels": tuple(channels),
                "backbone_stem": stem.shape[-1], "in_chans": stem.shape[2]}

    # -- everything -------------------------------------------------------------------------------------------
    def convert(self, name: str | None) -> Converted:
        if self.has("MAPHead_0/probe"):
            raise CheckpointError(f"{self.path} has an attention-pooling (MAP) head, which vitkit's ViT does not "
                                  f"support yet")
        state: dict[str, Tensor] = {}
        hybrid = self.has("conv_root/kernel")
        arch: dict = self._backbone(state) if hybrid else {}

        kernel = self.take("embedding/kernel")  # (P, P, C, D)
        if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
            raise CheckpointError(f"{self.path}: embedding/kernel has shape {kernel.shape}; expected a square "
                                  f"(P, P, C, D) convolution kernel")
        P, D = kernel.shape[0], kernel.shape[-1]
        state["patch_embed.proj.weight"] = _conv(kernel)
        state["patch_embed.proj.bias"] = _t(self.take("embedding/bias"))
        arch.update(patch_size=P, embed_dim=D)
        if not hybrid:
            arch["in_chans"] = kernel.shape[2]

        class_token = self.has("cls")
        if class_token:
            state["cls_token"] = _t(self.take("cls")).reshape(1, 1, D)
        pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if self.has(k)), None)
        if pos_key is None:
            raise CheckpointError(f"{self.path} has no learned position embedding ('Transformer/posembed_input/"
                                  f"pos_embedding' or 'pos_embedding'); fixed sin-cos models are not supported yet")
        pos = _t(self.take(pos_key)).reshape(1, -1, D)
        state["pos_embed"] = pos
        tokens = pos.shape[1] - int(class_token)
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise CheckpointError(f"{self.path}: the position embedding has {tokens} patch positions, not a square "
                                  f"grid; vitkit infers the image size from it and needs a square image")

        dims = self._blocks(state)
        state["norm.weight"] = _t(self.take("Transformer/encoder_norm/scale"))
        state["norm.bias"] = _t(self.take("Transformer/encoder_norm/bias"))
        head_hidden = None
        if self.has("pre_logits/kernel"):
            state["pre_logits.fc.weight"] = _dense(self.take("pre_logits/kernel"))
            state["pre_logits.fc.bias"] = _t(self.take("pre_logits/bias"))
            head_hidden = state["pre_logits.fc.bias"].shape[0]
        num_classes = 0
        if self.has("head/kernel"):
            state["head.weight"] = _dense(self.take("head/kernel"))
            state["head.bias"] = _t(self.take("head/bias"))
            num_classes = state["head.bias"].shape[0]

        left = sorted(set(self.w) - self.used)
        if left:
            raise CheckpointError(f"{self.path} has {len(left)} array(s) vitkit does not know where to put: "
                                  + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))

        reduction = 2 ** (1 + len(arch["backbone_layers"])) if hybrid else 1  # the ResNet's stride
        arch.update(depth=dims["depth"], num_heads=dims["num_heads"], mlp_ratio=dims["mlp"] / D,
                    img_size=side * P * reduction, num_classes=num_classes, head_hidden_size=head_hidden,
                    class_token=class_token, act="gelu_tanh")  # Flax's nn.gelu is the tanh approximation
        if not class_token:  # classifier 'gap': encoder norm on every token, then their mean
            arch.update(global_pool="avg", fc_norm=False)
        if hybrid:
            default = _closest(list_models(family="vit_hybrid"), arch)
        else:
            default = _vit_name(D, dims["depth"], dims["num_heads"], dims["mlp"], P, arch["img_size"])
        if name is not None:
            family = registered_family(name, self.path)
            if (family == "vit_hybrid") != hybrid or family not in ("vit", "vit_hybrid"):
                raise CheckpointError(f"{self.path} holds a {'hybrid ResNet + ViT' if hybrid else 'plain ViT'}, but "
                                      f"{name!r} is a {family} model; pass the matching name, or name=None to pick "
                                      f"it from the file")
        model_name, overrides = resolve_name(name, default, arch, self.path, describe=_describe(arch, hybrid))
        return Converted(model_name, state, overrides, None, "jax")


def _vit_name(D: int, depth: int, heads: int, mlp: int, P: int, img: int) -> str:
    """The registered ViT name nearest to these dimensions (the rest become overrides)."""
    from ..models.vit import VIT_SIZES
    size = next((s for s, dims in VIT_SIZES.items() if dims == (D, depth, heads, mlp)), None)
    size = size or next((s for s, dims in VIT_SIZES.items() if dims[0] == D), "base")
    for candidate in (f"vit_{size}_patch{P}_{img}", f"vit_{size}_patch{P}_224", f"vit_{size}_patch16_224"):
        if candidate in list_models(candidate):
            return candidate
    return "vit_base_patch16_224"


def _closest(names: list[str], arch: dict) -> str:
    """Of `names`, the one whose config differs from `arch` in the fewest fields."""
    def n_diff(n: str) -> int:
        cfg = model_config(n)
        return sum(getattr(cfg, f) != v for f, v in arch.items() if hasattr(cfg, f))
    return min(names, key=n_diff)


def _describe(arch: dict, hybrid: bool = False) -> str:
    s = (f"width {arch['embed_dim']}, depth {arch['depth']}, {arch['num_heads']} heads, MLP ratio "
         f"{arch['mlp_ratio']:g}, patch {arch['patch_size']}")
    if hybrid:
        s += f", ResNet stages {arch['backbone_layers']}"
    return s


