"""CaiT: counts and keys as timm's, equal to timm, talking-heads and class attention, recording, the face."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import vitkit
from vitkit.layers import Attention, AttentionRecorder
from vitkit.layers.attention import AttentionBase
from vitkit.models.cait import ClassAttention, ClassAttentionBlock, TalkingHeadAttention, cait_config

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, redraw_uniform, scale_by, timm_pair

NAMES = ["cait_xxs24_224", "cait_s24_224"]


def tiny(name: str = "cait_xxs24_224", **overrides) -> torch.nn.Module:
    """The model at its registered smoke-test size (32×32 images: 4 patches, D=32, 4 heads), in eval mode."""
    return vitkit.create_model(name, **{**vitkit.get_entry(name).tiny, **overrides}).eval()


def attach(model: torch.nn.Module, recorder: AttentionRecorder | None) -> list[str]:
    """Attach (or, with None, detach) a recorder to every attention module; their names, in order."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, AttentionBase):
            m.name, m.recorder = name, recorder
            names.append(name)
    return names


# ---- 1. parameter counts, keys and variants ----------------------------------------------------------------
PARAM_COUNTS = {"cait_xxs24_224": 11_956_264, "cait_s24_224": 46_916_200}  # with the 1000-class head


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


def test_layer_scale_gains_use_timm_keys():
    """The LayerScale gains live on the blocks as timm's `gamma_1`/`gamma_2`, in both kinds of block, and the
    parameter names and state-dict keys agree (so no-decay groups and checkpoints speak of the same tensors)."""
    model = tiny()
    keys = model.state_dict().keys()
    assert {"blocks.0.gamma_1", "blocks.1.gamma_2", "blocks_token_only.0.gamma_1",
            "blocks_token_only.1.gamma_2"} <= keys
    assert set(dict(model.named_parameters())) <= set(keys)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.1.gamma_2"] = torch.arange(32.0)
    state["blocks_token_only.0.gamma_1"] = -torch.arange(32.0)
    other = tiny()
    other.load_state_dict(state, strict=True)
    torch.testing.assert_close(other.blocks[1].gamma_2.detach(), torch.arange(32.0), rtol=0, atol=0)
    torch.testing.assert_close(other.blocks_token_only[0].gamma_1.detach(), -torch.arange(32.0), rtol=0, atol=0)


def test_whole_model_copies_and_pickles(images):
    """The key-renaming hooks survive deepcopy and torch.save of the whole module."""
    model = tiny()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    x = images()
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert other.state_dict().keys() == model.state_dict().keys()
        other.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_cait_config_decodes():
    assert cait_config("cait_s24_224") == vitkit.model_config("cait_s24_224")
    cfg = cait_config("cait_xxs24_224")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size, cfg.init_values) == (192, 24, 4, 224, 1e-5)
    assert (cfg.depth_token_only, cfg.mlp_ratio_token_only, cfg.qkv_bias) == (2, 4.0, True)
    assert cait_config("cait_m48_448").init_values == 1e-6 and cait_config("cait_xxs36_224").init_values == 1e-5
    for bad in ("cait_s_224", "cait_l24_224", "cait_s24"):
        with pytest.raises(ValueError, match="cait_s24_224"):
            cait_config(bad)


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Weights under which no mistake can hide below the tolerance: noise on the parameters that start
    degenerate (zero biases, unit norms, tokens); LayerScale gains around 0.3 instead of 1e-5, which would
    shrink any branch's error away; query/key weights 4× larger and head-mixing weights std 0.5, since at
    std 0.02 every attention map is nearly uniform and mixing it would barely count. Other weights are random
    already."""
    return perturb(model, params={
        "*gamma*": redraw_uniform(0.1, 0.5),
        "*qkv.weight": scale_by(4.0), "*attn.q.weight": scale_by(4.0), "*attn.k.weight": scale_by(4.0),
        "*proj_l.weight": scale_by(25.0), "*proj_w.weight": scale_by(25.0),
    })


# Reduced depth here (timm's Cait takes depth and depth_token_only too); full depth is in the slow tests.
PARITY = [
    ("cait_xxs24_224", {"depth": 2}),
    ("cait_s24_224", {"depth": 2, "depth_token_only": 1}),
    ("cait_xxs24_224", {"depth": 2, "global_pool": "avg"}),
]


@pytest.mark.timm
@pytest.mark.parametrize("name,overrides", PARITY, ids=[f"{n}-{o}" for n, o in PARITY])
def test_timm_parity(timm, name, overrides):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


@pytest.mark.timm
def test_timm_parity_of_intermediates(timm):
    """Per-block patch tokens and the final tokens equal timm's (its 'NLC' format)."""
    ours, theirs = timm_pair(timm, "cait_xxs24_224", perturb_with=_perturb, depth=3, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, blocks = ours.forward_intermediates(x, indices=[0, -1])
        their_final, their_blocks = theirs.forward_intermediates(x, indices=[0, 2], output_fmt="NLC")
    assert len(blocks) == len(their_blocks) == 2
    for a, b in zip([final, *blocks], [their_final, *their_blocks]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. talking-heads attention -----------------------------------------------------------------------------
def test_talking_heads_with_identity_mixing_is_plain_attention():
    """With proj_l = proj_w = identity the heads do not talk, and the layer equals multi-head attention (fused)."""
    th, plain = TalkingHeadAttention(32, num_heads=4).eval(), Attention(32, num_heads=4).eval()
    plain.load_state_dict({k: v for k, v in th.state_dict().items() if k.startswith(("qkv.", "proj."))})
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        mixed = th(x)
        for mix in (th.proj_l, th.proj_w):
            mix.weight.copy_(torch.eye(4))
            mix.bias.zero_()
        torch.testing.assert_close(th(x), plain(x), rtol=0, atol=1e-5)
        assert not torch.allclose(mixed, plain(x), atol=1e-3)  # with random mixing, the heads do talk


def test_talking_heads_follows_the_formula():
    """softmax(P_l · (Q Kᵀ/√d)) mixed by P_w, times V, written out per head with einsum."""
    attn = TalkingHeadAttention(32, num_heads=4).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 8).unbind(2)  # each (B, N, H, hd)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5
        scores = torch.einsum("gh,bhqk->bgqk", attn.proj_l.weight, scores) + attn.proj_l.bias[:, None, None]
        weights = scores.softmax(-1)
        weights = torch.einsum("gh,bhqk->bgqk", attn.proj_w.weight, weights) + attn.proj_w.bias[:, None, None]
        out = attn.proj(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 5, 32))
        torch.testing.assert_close(attn(x), out, rtol=0, atol=1e-5)


def test_talking_heads_recorded_path_equals_normal_path():
    """A recorder changes no output, and what it records is the weights applied to the values (after proj_w)."""
    attn = TalkingHeadAttention(32, num_heads=4).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = attn(x)
        attn.name, attn.recorder = "attn", AttentionRecorder()
        recorded = attn(x)
        (weights,) = attn.recorder.maps["attn"]
        v = attn.qkv(x).reshape(2, 5, 3, 4, 8)[:, :, 2].transpose(1, 2)  # (B, H, N, hd)
        rebuilt = attn.proj((weights @ v).transpose(1, 2).flatten(2))  # (B, N, D)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=0)
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(rebuilt, plain, rtol=0, atol=1e-5)
    assert not torch.allclose(weights.sum(-1), torch.ones(2, 4, 5), atol=1e-3)  # mixed after softmax: not rows of 1


# ---- 4. class attention -------------------------------------------------------------------------------------
def test_class_attention_recorded_path_equals_fused_path():
    attn = ClassAttention(32, num_heads=4).eval()
    x = torch.randn(2, 1 + 6, 32)
    with torch.no_grad():
        fused = attn(x)
        attn.name, attn.recorder = "ca", AttentionRecorder()
        explicit = attn(x)
    (weights,) = attn.recorder.maps["ca"]
    assert fused.shape == (2, 1, 32) and weights.shape == (2, 4, 1, 7)
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 1))


def test_class_attention_only_queries_with_cls():
    """The update depends on the patches only through keys and values: the [CLS] query sees every token."""
    attn = ClassAttention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        y = attn(x)
        moved = x.clone()
        moved[:, 1:] = moved[:, 1:].flip(1)  # reorder the patches: keys and values permute together
        torch.testing.assert_close(attn(moved), y, rtol=0, atol=1e-5)
        moved[:, 3] += 1.0  # change one patch: the [CLS] update changes
        assert not torch.allclose(attn(moved), y, atol=1e-4)


def test_class_attention_updates_only_cls(images):
    """Patch tokens pass through blocks_token_only unchanged: the final patch tokens are the normed output of
    the last self-attention block, and a different [CLS] token changes the [CLS] output only. (LayerScale
    starts at 0.5 here: at CaiT's 1e-5 the [CLS] update would be too small to see.)"""
    model = tiny(init_values=0.5)
    x = images()
    with torch.no_grad():
        final, blocks = model.forward_intermediates(x)
        torch.testing.assert_close(final[:, 1:], model.norm(blocks[-1]), rtol=0, atol=1e-6)
        assert not torch.allclose(final[:, :1], model.norm(model.cls_token.expand(2, -1, -1)), atol=1e-3)
        model.cls_token.add_(torch.randn_like(model.cls_token))  # (not a constant: LayerNorm would remove it)
        moved = model.forward_features(x)
    torch.testing.assert_close(moved[:, 1:], final[:, 1:], rtol=0, atol=0)
    assert not torch.allclose(moved[:, 0], final[:, 0], atol=1e-3)
    block = model.blocks_token_only[0]
    assert isinstance(block, ClassAttentionBlock)
    assert block(blocks[-1], model.cls_token.expand(2, -1, -1)).shape == (2, 1, 32)


def test_recorder_reads_every_cait_attention(images):
    """Recording changes no logits; it captures talking-heads weights (B, H, N, N) and class-attention
    weights (B, H, 1, N + 1), one map per layer per call."""
    model = tiny()
    x = images()
    with torch.no_grad():
        plain = model(x)
        recorder = AttentionRecorder()
        names = attach(model, recorder)
        recorded = model(x)
        attach(model, None)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=1e-5)
    assert names == ["blocks.0.attn", "blocks.1.attn", "blocks_token_only.0.attn", "blocks_token_only.1.attn"]
    assert set(recorder.maps) == set(names) and all(len(v) == 1 for v in recorder.maps.values())
    N, H = 4, 4
    for name in names[:2]:
        assert recorder.maps[name][0].shape == (2, H, N, N)
    for name in names[2:]:
        w = recorder.maps[name][0]
        assert w.shape == (2, H, 1, N + 1)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 1))


# ---- 5. the common face, initialisation, options -------------------------------------------------------------
def test_forward_intermediates_are_patch_tokens(images):
    model = tiny(depth=3)
    x = images()
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        _, chosen = model.forward_intermediates(x, indices=[0, -1])
    assert final.shape == (2, 1 + 4, 32)
    assert len(every) == len(model.feature_info) == 3 and all(t.shape == (2, 4, 32) for t in every)
    assert [f["module"] for f in model.feature_info] == ["blocks.0", "blocks.1", "blocks.2"]
    torch.testing.assert_close(chosen[0], every[0], rtol=0, atol=0)
    torch.testing.assert_close(chosen[1], every[2], rtol=0, atol=0)
    with pytest.raises(IndexError, match="3 blocks"):
        model.forward_intermediates(x, indices=[3])


def test_init_weights():
    model = vitkit.create_model("cait_s24_224", depth=2, depth_token_only=1)
    assert 0.015 < model.pos_embed.std().item() < 0.025 and 0.01 < model.cls_token.std().item() < 0.03
    for block in [*model.blocks, *model.blocks_token_only]:
        for gamma in (block.gamma_1, block.gamma_2):
            assert torch.equal(gamma.detach(), torch.full((384,), 1e-5))
        assert torch.equal(block.norm1.weight.detach(), torch.ones(384)) and not block.norm1.bias.any()
    mixer = model.blocks[0].attn.proj_l
    assert not mixer.bias.any() and 0.01 < mixer.weight.std().item() < 0.03
    assert 0.015 < model.blocks[0].attn.qkv.weight.std().item() < 0.025 and not model.head.bias.any()
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


def test_drop_path_is_the_same_in_every_self_attention_block():
    model = tiny(depth=3, drop_path_rate=0.1)
    assert [b.drop_path.p for b in model.blocks] == [0.1, 0.1, 0.1]  # CaiT's constant rate, not a ramp
    assert not any(hasattr(b, "drop_path") for b in model.blocks_token_only)


def test_global_pool_and_reset_classifier(images):
    model = tiny(num_classes=3)
    x = images()
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        model.reset_classifier(6, global_pool="avg")
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
        assert model(x).shape == (2, 6)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(6, global_pool="max")
    with pytest.raises(ValueError, match="global_pool"):
        tiny(global_pool="max")
