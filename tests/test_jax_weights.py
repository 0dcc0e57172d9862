"""The JAX release reader (vitkit.weights.jax) against timm's own .npz loader.

Every numerical test writes a perturbed timm model to an .npz in the JAX layout (`to_jax` below: Flax names,
HWIO conv kernels, (in, out) dense kernels, attention kernels split into query/key/value shaped
(D, heads, hd) and out shaped (heads, hd, D)), loads that file into a fresh timm model with timm's
`_load_weights` (the reference reader), reads it with vitkit and compares the logits. What timm's loader does
not read (the pre-logits layer, Linen names under 'Transformer/posembed_input') is checked against numpy
arithmetic on the file's arrays, or against the same weights in a layout timm does read.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitkit
from vitkit.weights import CheckpointError
from vitkit.weights import jax as jax_weights

from parity import TOL, perturb

pytestmark = pytest.mark.timm

PRE_LINEN = ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
LINEN = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


# ---- timm state dict → JAX arrays (the inverse of the mapping under test, written independently) -------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().copy()


def _hwio(w: torch.Tensor) -> np.ndarray:
    return _np(w.permute(2, 3, 1, 0))  # OIHW → HWIO


def to_jax(model: torch.nn.Module, *, naming=PRE_LINEN, prefix: str = "", big_vision: bool = False,
           scanned: bool = False) -> dict[str, np.ndarray]:
    """A timm ViT (or hybrid) as the arrays of a JAX release .npz. big_vision: position embedding at the top
    level ('pos_embedding'); scanned: the blocks stacked along a leading depth axis."""
    sd = model.state_dict()
    D = sd["patch_embed.proj.weight"].shape[0]
    heads = model.blocks[0].attn.num_heads
    hd = D // heads
    mha, ln2, mlp = naming
    out: dict[str, np.ndarray] = {
        "embedding/kernel": _hwio(sd["patch_embed.proj.weight"]),
        "embedding/bias": _np(sd["patch_embed.proj.bias"]),
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): _np(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": _np(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": _np(sd["norm.bias"]),
    }
    if "cls_token" in sd:
        out["cls"] = _np(sd["cls_token"])
    if "head.weight" in sd:
        out["head/kernel"], out["head/bias"] = _np(sd["head.weight"].T), _np(sd["head.bias"])
    blocks = []
    for i in range(len(model.blocks)):
        b, blk = f"blocks.{i}.", {}
        blk["LayerNorm_0/scale"], blk["LayerNorm_0/bias"] = _np(sd[b + "norm1.weight"]), _np(sd[b + "norm1.bias"])
        for n, w, bias in zip(("query", "key", "value"), sd[b + "attn.qkv.weight"].chunk(3),
                              sd[b + "attn.qkv.bias"].chunk(3)):
            blk[f"{mha}/{n}/kernel"] = _np(w.T.reshape(D, heads, hd))
            blk[f"{mha}/{n}/bias"] = _np(bias.reshape(heads, hd))
        blk[f"{mha}/out/kernel"] = _np(sd[b + "attn.proj.weight"].T.reshape(heads, hd, D))
        blk[f"{mha}/out/bias"] = _np(sd[b + "attn.proj.bias"])
        blk[f"{ln2}/scale"], blk[f"{ln2}/bias"] = _np(sd[b + "norm2.weight"]), _np(sd[b + "norm2.bias"])
        for r in range(2):
            blk[f"{mlp}/Dense_{r}/kernel"] = _np(sd[b + f"mlp.fc{r + 1}.weight"].T)
            blk[f"{mlp}/Dense_{r}/bias"] = _np(sd[b + f"mlp.fc{r + 1}.bias"])
        blocks.append(blk)
    if scanned:
        out.update({f"Transformer/encoderblock/{k}": np.stack([blk[k] for blk in blocks]) for k in blocks[0]})
    else:
        out.update({f"Transformer/encoderblock_{i}/{k}": v for i, blk in enumerate(blocks) for k, v in blk.items()})
    if hasattr(model.patch_embed, "backbone"):
        out.update(_backbone_to_jax(sd))
    return {prefix + k: v for k, v in out.items()}


def _backbone_to_jax(sd: dict) -> dict[str, np.ndarray]:
    pre, out = "patch_embed.backbone.", {}
    out["conv_root/kernel"] = _hwio(sd[pre + "stem.conv.weight"])
    out["gn_root/scale"], out["gn_root/bias"] = _np(sd[pre + "stem.norm.weight"]), _np(sd[pre + "stem.norm.bias"])
    for key in sd:
        if not (key.startswith(pre + "stages.") and key.endswith("conv1.weight") and "downsample" not in key):
            continue
        s, u = int(key.split(".")[3]), int(key.split(".")[5])
        b, bp = f"{pre}stages.{s}.blocks.{u}.", f"block{s + 1}/unit{u + 1}/"
        for r in (1, 2, 3):
            out[f"{bp}conv{r}/kernel"] = _hwio(sd[b + f"conv{r}.weight"])
            out[f"{bp}gn{r}/scale"] = _np(sd[b + f"norm{r}.weight"])
            out[f"{bp}gn{r}/bias"] = _np(sd[b + f"norm{r}.bias"])
        if b + "downsample.conv.weight" in sd:
            out[f"{bp}conv_proj/kernel"] = _hwio(sd[b + "downsample.conv.weight"])
            out[f"{bp}gn_proj/scale"] = _np(sd[b + "downsample.norm.weight"])
            out[f"{bp}gn_proj/bias"] = _np(sd[b + "downsample.norm.bias"])
    return out


# ---- helpers ------------------------------------------------------------------------------------------------
def _timm_vit(timm, name: str | None = None, **kw) -> torch.nn.Module:
    """A perturbed timm ViT computing as the release does: tanh GELU (Flax's default; the test against Flax
    itself is test_the_release_numerics_are_flax_s)."""
    kw.setdefault("act_layer", "gelu_tanh")
    if name:
        model = timm.create_model(name, pretrained=False, **kw)
    else:
        from timm.models.vision_transformer import VisionTransformer
        model = VisionTransformer(**kw)
    return perturb(model, scale=0.1).eval()


def _reference(timm_model_fn, path) -> torch.nn.Module:
    """A fresh timm model with the .npz loaded by timm's own JAX loader."""
    from timm.models.vision_transformer import _load_weights
    fresh = timm_model_fn()
    with torch.no_grad():
        _load_weights(fresh, str(path))
    return fresh.eval()


def _ours(converted) -> torch.nn.Module:
    model = vitkit.create_model(converted.model_name, **converted.overrides).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert (yb[0] - yb[1]).abs().max() > 1e-3  # the outputs depend on the input: a real comparison
    return (ya - yb).abs().max().item()


# ---- 1. the release's own layout, against timm's loader ---------------------------------------------------------
def test_a_registered_vit_with_class_token_and_head_is_named_and_matches_timm(timm, tmp_path):
    """ViT-Ti/16 at full size: the file alone names it, with no overrides at all."""
    theirs = _timm_vit(timm, "vit_tiny_patch16_224")
    path = tmp_path / "Ti_16.npz"
    np.savez(path, **to_jax(theirs))
    assert jax_weights.detect(path)
    ref = _reference(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer="gelu_tanh"), path)
    got = jax_weights.read(path)
    assert (got.model_name, got.overrides, got.source) == ("vit_tiny_patch16_224", {"act": "gelu_tanh"}, "jax")
    x = torch.randn(2, 3, 224, 224)
    assert _max_diff(_ours(got), ref, x) <= TOL
    assert _max_diff(ref, theirs, x) <= TOL  # timm's loader read our file as we meant it


def test_a_small_unregistered_size_gets_overrides(timm, tmp_path):
    kw = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_classes=7)
    theirs = _timm_vit(timm, **kw)
    path = tmp_path / "small.npz"
    np.savez(path, **to_jax(theirs))
    got = jax_weights.read(path)
    assert got.model_name == "vit_base_patch8_224"  # no size has width 48: the base one, overridden
    assert got.overrides == dict(img_size=32, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_classes=7,
                                 act="gelu_tanh")
    ref = _reference(lambda: _timm_vit(timm, **kw), path)
    assert _max_diff(_ours(got), ref, torch.randn(2, 3, 32, 32)) <= TOL


def test_the_representation_layer_is_kept(timm, tmp_path):
    """The i21k releases have pre_logits (Linear + tanh) before the head. timm's loader skips it (its ViT has no
    such layer), so the reference is timm's pooled features from that file, pushed through pre_logits and the
    head with numpy on the file's own (in, out) kernels."""
    kw = dict(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3)
    theirs = _timm_vit(timm, num_classes=0, **kw)
    arrays = to_jax(theirs)
    rng = np.random.default_rng(0)
    arrays.update({"pre_logits/kernel": rng.normal(size=(48, 24)).astype(np.float32) * 0.3,
                   "pre_logits/bias": rng.normal(size=24).astype(np.float32) * 0.1,
                   "head/kernel": rng.normal(size=(24, 5)).astype(np.float32),
                   "head/bias": rng.normal(size=5).astype(np.float32)})
    path = tmp_path / "repr.npz"
    np.savez(path, **arrays)
    got = jax_weights.read(path)
    assert got.overrides["head_hidden_size"] == 24 and got.overrides["num_classes"] == 5
    ref = _reference(lambda: _timm_vit(timm, num_classes=0, **kw), path)  # (B, 48): pooled, normed features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = ref(x).numpy()
        ours = _ours(got)(x).numpy()
    expected = np.tanh(feats @ arrays["pre_logits/kernel"] + arrays["pre_logits/bias"]) @ arrays["head/kernel"] \
        + arrays["head/bias"]
    assert np.abs(ours - expected).max() <= TOL


# ---- 2. the other layouts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scanned", [False, True], ids=["per-block", "scanned"])
def test_big_vision_layout_with_class_token(timm, tmp_path, scanned):
    """'params/' prefix, Linen names, top-level pos_embedding, optionally stacked blocks: timm reads these too."""
    kw = dict(img_size=32, patch_size=16, embed_dim=48, depth=3, num_heads=3, num_classes=4)
    theirs = _timm_vit(timm, **kw)
    path = tmp_path / "bv.npz"
    np.savez(path, **to_jax(theirs, naming=LINEN, prefix="params/", big_vision=True, scanned=scanned))
    assert jax_weights.detect(path)
    ref = _reference(lambda: _timm_vit(timm, **kw), path)
    assert _max_diff(_ours(jax_weights.read(path)), ref, torch.randn(2, 3, 32, 32)) <= TOL


def test_global_average_pooling_models_without_class_token(timm, tmp_path):
    """classifier 'gap': no 'cls' array; encoder norm on every token, then their mean, then the head."""
    kw = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=4, class_token=False,
              global_pool="avg", fc_norm=False)
    theirs = _timm_vit(timm, **kw)
    path = tmp_path / "gap.npz"
    np.savez(path, **to_jax(theirs, naming=LINEN, big_vision=True))
    got = jax_weights.read(path)
    assert got.overrides["class_token"] is False and got.overrides["global_pool"] == "avg"
    ref = _reference(lambda: _timm_vit(timm, **kw), path)
    assert _max_diff(_ours(got), ref, torch.randn(2, 3, 32, 32)) <= TOL


def test_linen_names_under_the_original_layout_read_like_pre_linen(timm, tmp_path):
    """MlpBlock_0 / MultiHeadDotProductAttention_0 / LayerNorm_1 next to 'Transformer/posembed_input' (timm
    reads only MlpBlock_3 there): the same weights under either naming give the same state dict."""
    theirs = _timm_vit(timm, img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=4)
    np.savez(tmp_path / "old.npz", **to_jax(theirs, naming=PRE_LINEN))
    np.savez(tmp_path / "new.npz", **to_jax(theirs, naming=LINEN))
    old, new = jax_weights.read(tmp_path / "old.npz"), jax_weights.read(tmp_path / "new.npz")
    assert old.state.keys() == new.state.keys() == theirs.state_dict().keys()
    for k in old.state:
        assert torch.equal(old.state[k], new.state[k]), k
        torch.testing.assert_close(old.state[k], theirs.state_dict()[k], rtol=0, atol=0)


def test_hybrid_r26_vit_matches_timm(timm, tmp_path):
    """R26+ViT-S/32 (ResNet 'block{s}/unit{u}/...' keys, 1×1 'embedding'), whole backbone, 2 blocks, 64×64."""
    kw = dict(img_size=64, depth=2, num_classes=10)
    theirs = _timm_vit(timm, "vit_small_r26_s32_224", **kw)
    arrays = to_jax(theirs)
    assert arrays["embedding/kernel"].shape == (1, 1, 2048, 384) and "block4/unit2/conv3/kernel" in arrays
    path = tmp_path / "R26_S_32.npz"
    np.savez(path, **arrays)
    got = jax_weights.read(path)
    assert (got.model_name, got.overrides) == ("vit_small_r26_s32_224", {**kw, "act": "gelu_tanh"})
    ref = _reference(lambda: timm.create_model("vit_small_r26_s32_224", pretrained=False, act_layer="gelu_tanh", **kw), path)
    assert _max_diff(_ours(got), ref, torch.randn(2, 3, 64, 64)) <= TOL


# ---- 3. names and bad input -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_npz(tmp_path, timm):
    theirs = _timm_vit(timm, img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=3)
    path = tmp_path / "ti.npz"
    np.savez(path, **to_jax(theirs))
    return path


def test_a_given_name_must_have_the_files_architecture(tiny_npz):
    got = jax_weights.read(tiny_npz, "vit_tiny_patch16_384")  # image size and classes may differ
    assert got.model_name == "vit_tiny_patch16_384" and got.overrides == {"img_size": 32, "num_classes": 3, "act": "gelu_tanh"}
    with pytest.raises(CheckpointError, match=r"does not fit 'vit_base_patch16_224'.*embed_dim 192") as err:
        jax_weights.read(tiny_npz, "vit_base_patch16_224")
    assert "ti.npz" in str(err.value)
    with pytest.raises(CheckpointError, match="plain ViT, but 'swin_tiny_patch4_window7_224' is a swin model"):
        jax_weights.read(tiny_npz, "swin_tiny_patch4_window7_224")
    with pytest.raises(CheckpointError, match="unknown model 'vit_nonsense'"):
        jax_weights.read(tiny_npz, "vit_nonsense")


def test_an_npz_of_something_else_is_refused_by_name(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((3, 3), np.float32), bias=np.zeros(3, np.float32))
    assert not jax_weights.detect(path)
    with pytest.raises(CheckpointError, match=r"other\.npz is an \.npz but not a JAX ViT checkpoint: it has no "
                                              r"embedding/kernel.*bias, weights"):
        jax_weights.read(path)


def test_missing_and_unknown_arrays_are_named(tiny_npz, tmp_path):
    arrays = dict(np.load(tiny_npz))
    del arrays["Transformer/encoderblock_3/MlpBlock_3/Dense_1/bias"]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"cut\.npz has no array 'Transformer/encoderblock_3/MlpBlock_3/"
                                              r"Dense_1/bias'"):
        jax_weights.read(tmp_path / "cut.npz")
    arrays = dict(np.load(tiny_npz), **{"Transformer/mystery/kernel": np.zeros(2, np.float32)})
    np.savez(tmp_path / "extra.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"1 array\(s\) vitkit does not know where to put: "
                                              r"Transformer/mystery/kernel"):
        jax_weights.read(tmp_path / "extra.npz")


def test_non_npz_files_are_refused_without_unpickling(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pth")  # also a zip file, of another kind
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))  # needs pickle to read
    for name in ("w.pth", "one.npy", "junk.npz", "objects.npz"):
        assert not jax_weights.detect(tmp_path / name) or name == "objects.npz"
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            jax_weights.read(tmp_path / name)
    assert not jax_weights.detect(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        jax_weights.read(tmp_path / "missing.npz")


def test_a_map_head_is_not_supported_yet(tiny_npz, tmp_path):
    arrays = dict(np.load(tiny_npz), **{"MAPHead_0/probe": np.zeros((1, 1, 192), np.float32)})
    np.savez(tmp_path / "map.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"map\.npz has an attention-pooling \(MAP\) head"):
        jax_weights.read(tmp_path / "map.npz")
