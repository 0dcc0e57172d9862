"""Fuzzing every loader: each malformed input ends either loaded or in vitkit's own error, never in a raw exception.

One test per loader, about 300 generated cases each (hypothesis, derandomised: the same cases on every run, so a
failure here is a real one and reproduces). The inputs start from a valid file of each kind and are damaged:

    vitkit headers        the JSON fields of a vitkit checkpoint (model name and options, data record, train)
                          and its tensors (retyped, non-finite, reshaped, dropped, added)
    vitkit bytes          a vitkit checkpoint with one byte flipped, a piece cut off, or junk put in: refused
                          (its checksum), or loaded with exactly the contents it was saved with
    Hugging Face configs  config.json fields of ViT, DeiT, Swin, BEiT and ConvNeXt folders
    .pth bytes            random bytes, torch.save files (zip and legacy) with bytes flipped, cut or inserted,
                          well-formed pickles of things that are not a state dict, and torchvision state dicts
                          with tensors dropped, reshaped or retyped
    .npz files            arrays of a JAX ViT dropped, renamed, reshaped, retyped; the zip's bytes damaged
    image files           PNG, JPEG, BMP and WEBP files with bytes flipped, cut, or their sizes rewritten

"Vitkit's own error" is VitkitError (CheckpointError, DataError) or ImageSizeError.
"""
from __future__ import annotations

import dataclasses
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import vitkit
from vitkit.data import ImageFolder, load_image
from vitkit.errors import VitkitError
from vitkit.infer import classify_images, load_model
from vitkit.layers import ImageSizeError
from vitkit.weights import hf, jax, load_checkpoint, read_state_dict, save_checkpoint
from vitkit.weights.checkpoint import FORMAT

OURS = (VitkitError, ImageSizeError)
# The inputs are damaged on purpose: torch, numpy and PIL warn about them on their way to an error.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def ends_well(load, *args, **kwargs):
    """Run one loader on one case: its result, or None when it refused with vitkit's own error."""
    try:
        return load(*args, **kwargs)
    except OURS as e:
        assert str(e), f"{type(e).__name__} with an empty message"
        return None


# ---- values a damaged field may hold ----------------------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=6)


def near(value):
    """The value itself, or one like it: off by a little, of another type, wrapped in a list, or anything."""
    like = [st.just(value), JSON]
    if isinstance(value, bool):
        like.append(st.just(not value))
    elif isinstance(value, (int, float)):
        like += [st.sampled_from([value + 1, value - 1, -value, 0, value * 1000, str(value), [value]])]
    elif isinstance(value, (list, tuple)):
        like += [st.lists(st.integers(-2, 64) | st.text(max_size=2), max_size=len(value) + 2),
                 st.just(list(value)[::-1]), st.just(list(value) + list(value))]
    elif isinstance(value, str):
        like.append(st.text(max_size=len(value) + 3))
    return st.one_of(*like)


@st.composite
def damaged_dict(draw, base: dict, extra_keys=("nosuch",)):
    """`base` with some fields changed, dropped or added."""
    out = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(base) + list(extra_keys)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["change", "change", "drop"]))
        if action == "drop":
            out.pop(key, None)
        else:
            out[key] = draw(near(base.get(key)) if key in base else JSON)
    return out


@st.composite
def damaged_bytes(draw, data: bytes):
    """`data` with bytes flipped, a piece cut off or removed, or junk put in."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "flip", "flip", "cut", "delete", "insert"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at:]
        elif how == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def png(folder) -> Path:
    path = folder / "digit.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(path)
    return path


# ---- vitkit checkpoints: the header --------------------------------------------------------------------------
PICO = dict(depth=1, num_classes=3)
torch.manual_seed(0)
PICO_STATE = vitkit.create_model("vit_pico_patch2_8", **PICO).state_dict()
HEADER = {
    "model": {"name": "vit_pico_patch2_8", "overrides": dict(PICO, img_size=[8, 8])},
    "data": {"classes": ["a", "b", "c"], "mean": [0.5], "std": [0.5], "img_size": [8, 8], "in_chans": 1,
             "crop_pct": 1.0, "source": "digits"},
}
NAMES = st.sampled_from(["vit_pico_patch2_8", "vit_tiny_patch16_224", "resnet18", "swin_tiny_patch4_window7_224",
                         "nosuch_model"])
PICO_CONFIG = vitkit.model_config("vit_pico_patch2_8")
OPTIONS = sorted(f.name for f in dataclasses.fields(PICO_CONFIG))


@st.composite
def vitkit_headers(draw) -> dict[str, str]:
    more = {k: getattr(PICO_CONFIG, k) for k in draw(st.lists(st.sampled_from(OPTIONS), max_size=2))}
    options = draw(damaged_dict({**HEADER["model"]["overrides"], **more}, extra_keys=("nosuch",)))
    model = draw(damaged_dict({"name": draw(NAMES), "overrides": options}, extra_keys=()))
    data = draw(damaged_dict(HEADER["data"], extra_keys=("classes", "epoch")))
    meta = {"format": FORMAT, "vitkit_version": "0.1.0"}
    for key, value in (("model", model), ("data", data), ("train", draw(st.none() | JSON))):
        kind = draw(st.sampled_from(["json", "json", "json", "json", "junk", "absent"]))
        if kind == "json" and value is not None:
            meta[key] = json.dumps(value)
        elif kind == "junk":
            meta[key] = draw(st.text(max_size=12))
    return meta


@st.composite
def state_dicts(draw, state: dict) -> dict:
    """`state` as it is, or with one tensor retyped, non-finite, reshaped, dropped, or one added."""
    out = dict(state)
    key = draw(st.sampled_from(sorted(state)))
    how = draw(st.sampled_from(["same", "same", "int", "nan", "inf", "reshape", "drop", "add"]))
    if how == "int":
        out[key] = state[key].to(draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.uint8])))
    elif how in ("nan", "inf"):
        out[key] = state[key].clone().reshape(-1).index_fill_(0, torch.tensor([0]), float(how)).reshape(
            state[key].shape)
    elif how == "reshape":
        out[key] = state[key].reshape(-1)[:draw(st.integers(0, state[key].numel()))].clone()
    elif how == "drop":
        del out[key]
    elif how == "add":
        out["extra." + key] = state[key].clone()
    return out


@FUZZ
@given(meta=vitkit_headers(), state=state_dicts(PICO_STATE))
def test_vitkit_checkpoint_headers(folder, png, meta, state):
    path = folder / "header.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    model = ends_well(vitkit.load_pretrained, path)
    if model is not None:
        assert isinstance(model, torch.nn.Module)
    ckpt = ends_well(load_checkpoint, path)
    if ckpt is not None:
        ends_well(ckpt.build_model)
    loaded = ends_well(load_model, str(path))
    if loaded is not None:  # what `vitkit predict` does next
        ends_well(classify_images, loaded.model, loaded.record, [str(png)], top_k=2)


@pytest.fixture(scope="module")
def saved_checkpoint(folder):
    """A vitkit checkpoint as save_checkpoint writes it (with its checksum): (bytes, what it holds)."""
    path = folder / "saved.safetensors"
    model = vitkit.create_model("vit_pico_patch2_8", **PICO)
    save_checkpoint(path, model=model, model_name="vit_pico_patch2_8", overrides=dict(PICO, img_size=(8, 8)),
                    data=HEADER["data"])
    return path.read_bytes(), load_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_vitkit_checkpoint_bytes(folder, saved_checkpoint, data):
    original, expected = saved_checkpoint
    damaged = bytearray(original)
    at = data.draw(st.integers(0, len(original) - 1))
    how = data.draw(st.sampled_from(["flip", "flip", "flip", "flip", "cut", "insert"]))
    if how == "flip":
        damaged[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del damaged[at:]
    else:
        damaged[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    path = folder / "damaged.safetensors"
    path.write_bytes(bytes(damaged))
    ckpt = ends_well(load_checkpoint, path)
    if ckpt is not None:  # not refused: then nothing that matters changed (a flip in the header's padding, say)
        assert (ckpt.model_name, ckpt.overrides, ckpt.data) == (expected.model_name, expected.overrides, expected.data)
        assert ckpt.state.keys() == expected.state.keys()
        assert all(torch.equal(ckpt.state[k], v) for k, v in expected.state.items())
    ends_well(vitkit.load_pretrained, path)


# ---- Hugging Face folders: config.json --------------------------------------------------------------------------
HF_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, depth=1, num_classes=3)),
    "deit": ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=1, num_classes=3)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1),
                                                  num_heads=(1, 2), window_size=4, num_classes=3)),
    "beit": ("beit_base_patch16_224", dict(img_size=32, depth=1, embed_dim=32, num_heads=2, num_classes=3,
                                           use_rel_pos_bias=True)),
    "convnext": ("convnext_atto", dict(dims=(8, 16), depths=(1, 1), num_classes=3)),
}
HF_KEYS = ("architectures", "id2label", "label2id", "num_labels", "hidden_act", "layer_norm_eps", "image_size",
           "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "intermediate_size", "qkv_bias", "pooler_act", "pooler_output_size", "vitkit_model", "embed_dim", "depths",
           "num_heads", "window_size", "mlp_ratio", "use_absolute_embeddings", "hidden_sizes", "num_stages",
           "layer_scale_init_value", "use_mean_pooling", "use_relative_position_bias",
           "use_shared_relative_position_bias", "use_absolute_position_embeddings", "model_type")


@pytest.fixture(scope="module")
def hf_folders(folder) -> dict[str, tuple[Path, dict]]:
    out = {}
    for family, (name, options) in HF_MODELS.items():
        path = hf.write(vitkit.create_model(name, **options), name, folder / f"hf_{family}", classes=["x", "y", "z"])
        out[family] = path, json.loads((path / "config.json").read_text())
    return out


@FUZZ
@given(family=st.sampled_from(sorted(HF_MODELS)), data=st.data())
def test_hugging_face_config_fields(hf_folders, family, data):
    path, config = hf_folders[family]
    damaged = json.dumps(data.draw(damaged_dict(config, extra_keys=HF_KEYS)))
    text = data.draw(st.sampled_from([damaged] * 9 + [f"[{damaged}]", damaged[:len(damaged) // 2]]))
    try:
        (path / "config.json").write_text(text)
        ends_well(vitkit.load_pretrained, path)
    finally:
        (path / "config.json").write_text(json.dumps(config))


# ---- PyTorch pickles: the bytes ---------------------------------------------------------------------------------
def _saved(obj, zip_format: bool = True) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


def _torchvision_vit(state: dict) -> dict:
    """A vitkit ViT's state dict under torchvision's ViT names (weights.torchvision's table, read backwards)."""
    out = {"conv_proj.weight": state["patch_embed.proj.weight"], "conv_proj.bias": state["patch_embed.proj.bias"],
           "class_token": state["cls_token"], "encoder.pos_embedding": state["pos_embed"],
           "encoder.ln.weight": state["norm.weight"], "encoder.ln.bias": state["norm.bias"],
           "heads.head.weight": state["head.weight"], "heads.head.bias": state["head.bias"]}
    names = {"norm1": "ln_1", "attn.qkv.weight": "self_attention.in_proj_weight",
             "attn.qkv.bias": "self_attention.in_proj_bias", "attn.proj": "self_attention.out_proj",
             "norm2": "ln_2", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}
    for key, value in state.items():
        if key.startswith("blocks.0."):
            rest = key.removeprefix("blocks.0.")
            ours = next(k for k in names if rest.startswith(k))
            out["encoder.layers.encoder_layer_0." + names[ours] + rest.removeprefix(ours)] = value
    return out


TV_STATE = _torchvision_vit(PICO_STATE)
SMALL_STATE = {k: v for k, v in PICO_STATE.items() if k.startswith(("cls_token", "head"))}
PTH_FILES = [_saved(SMALL_STATE), _saved(SMALL_STATE, zip_format=False),
             _saved({"state_dict": SMALL_STATE, "epoch": 3})]
TENSORS = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 3), max_size=3),
                    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64]))
PICKLABLE = st.recursive(  # what torch.load(weights_only=True) returns that is not a state dict
    SCALARS | TENSORS, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3), max_leaves=6)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.sampled_from(PTH_FILES).flatmap(damaged_bytes),
                      PICKLABLE.map(_saved), state_dicts(TV_STATE).map(_saved)),
       suffix=st.sampled_from([".pth", ".bin", ".pt"]))
def test_pytorch_pickle_bytes(folder, data, suffix):
    path = folder / f"weights{suffix}"
    path.write_bytes(data)
    try:
        state = read_state_dict(path)
    except VitkitError as e:  # nothing generated here names code to run: trusting it would never help
        assert "trust_pickle" not in str(e), str(e)
    else:
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ends_well(vitkit.load_pretrained, path, "vit_pico_patch2_8", **PICO)
    ends_well(vitkit.load_pretrained, path)  # a torchvision state dict says what it is


# ---- the JAX release: .npz ---------------------------------------------------------------------------------------
def _jax_arrays(model) -> dict[str, np.ndarray]:
    """A vitkit ViT's weights under the JAX release's names and layouts (pre-Linen block naming)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D, heads = model.embed_dim, model.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        for n, w, bias in zip(("query", "key", "value"), np.split(sd[b + "attn.qkv.weight"], 3),
                              np.split(sd[b + "attn.qkv.bias"], 3)):
            out[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(D, heads, D // heads)
            out[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(heads, D // heads)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, -1, D)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    return out


JAX_ARRAYS = _jax_arrays(vitkit.create_model("vit_pico_patch2_8", depth=2, num_classes=3))
DTYPES = st.sampled_from([np.float16, np.float64, np.int32, np.int8, np.uint8, np.bool_, np.complex64, "<U2"])


@st.composite
def damaged_arrays(draw) -> dict[str, np.ndarray]:
    arrays = dict(JAX_ARRAYS)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(arrays)))
        how = draw(st.sampled_from(["drop", "rename", "reshape", "shape", "dtype", "nan", "add"]))
        a = arrays[key]
        if how == "drop":
            del arrays[key]
        elif how == "rename":
            arrays[key.replace(draw(st.sampled_from(["_0", "_1", "/", "Transformer"])), draw(st.text(max_size=2)))] = \
                arrays.pop(key)
        elif how == "reshape":
            arrays[key] = a.reshape(draw(st.sampled_from([(-1,), (1, -1), (-1, 1), (1, 1, -1), (1, 1, 1, -1)])))
        elif how == "shape":
            arrays[key] = np.zeros(draw(st.lists(st.integers(0, 5), max_size=4)), np.float32)
        elif how == "dtype":
            dtype = draw(DTYPES)
            arrays[key] = a.astype(dtype) if a.dtype.kind == "f" and dtype != "<U2" else np.zeros(a.shape, dtype)
        elif how == "nan":
            arrays[key] = np.full_like(a, np.nan)
        else:
            arrays[draw(st.text(max_size=20))] = np.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), np.float32)
    return arrays


def _npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


NPZ = [_npz(JAX_ARRAYS), _npz(JAX_ARRAYS, compressed=True)]


@FUZZ
@given(data=st.one_of(damaged_arrays().map(_npz), st.sampled_from([0, 1]).map(NPZ.__getitem__).flatmap(damaged_bytes),
                      st.binary(max_size=300)))
def test_jax_npz_files(folder, data):
    path = folder / "release.npz"
    path.write_bytes(data)
    ends_well(vitkit.load_pretrained, path)
    ends_well(jax.read, path, "vit_pico_patch2_8")


# ---- image files --------------------------------------------------------------------------------------------------
def _image(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = [_image(f, m, s) for f, m, s in [  # every mode load_image converts, in each format it accepts (and two more)
    ("PNG", "RGB", (9, 7)), ("PNG", "L", (5, 5)), ("PNG", "RGBA", (4, 6)), ("PNG", "P", (6, 4)),
    ("PNG", "I;16", (3, 3)), ("PNG", "1", (8, 2)), ("JPEG", "RGB", (16, 8)), ("JPEG", "L", (8, 8)),
    ("JPEG", "CMYK", (8, 8)), ("BMP", "RGB", (5, 3)), ("BMP", "P", (4, 4)), ("WEBP", "RGB", (6, 6)),
    ("WEBP", "RGBA", (5, 7)), ("GIF", "P", (4, 4)), ("TIFF", "RGB", (3, 3))]]


@st.composite
def bmp_with_size(draw) -> bytes:
    """A BMP whose header claims another width and height (BMP has no checksum to catch it)."""
    data = bytearray(_image("BMP", "RGB", (5, 3)))
    side = st.integers(-70000, 70000) | st.sampled_from([0, 1, 2**31 - 1, -(2**31)])
    data[18:26] = struct.pack("<ii", draw(side), draw(side))
    return bytes(data)


@FUZZ
@given(data=st.one_of(st.sampled_from(IMAGES).flatmap(damaged_bytes), bmp_with_size(), st.sampled_from(IMAGES),
                      st.binary(max_size=200)),
       suffix=st.sampled_from([".png", ".jpg", ".bmp", ".webp"]), in_chans=st.sampled_from([1, 3]),
       img_size=st.sampled_from([None, 8, (6, 10)]))
def test_image_files(folder, data, suffix, in_chans, img_size):
    root = folder / "images"
    path = root / "cat" / f"x{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    image = ends_well(load_image, path, in_chans=in_chans, img_size=img_size)
    if image is not None:
        assert image.shape[0] == in_chans and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
    dataset = ends_well(ImageFolder, root, img_size=img_size, in_chans=in_chans)
    if dataset is not None:
        ends_well(dataset.__getitem__, 0)
