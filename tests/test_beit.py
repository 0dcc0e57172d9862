"""BEiT: parameter counts, keys, equality with timm, image sizes, recorded attention."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers.attention import AttentionRecorder
from vitkit.layers.patch_embed import ImageSizeError
from vitkit.models.beit import BEIT_TINY, BeitAttention

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, redraw_normal, timm_pair

NAMES = ["beit_base_patch16_224", "beit_large_patch16_224"]
PARAM_COUNTS = {  # with the 1000-class head
    "beit_base_patch16_224": 86_530_984,
    "beit_large_patch16_224": 304_430_568,
}


# ---- 1. parameter counts and keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


def test_keys_are_timms_beit_names():
    keys = set(meta_model("beit_base_patch16_224", depth=1).state_dict())
    assert {"blocks.0.gamma_1", "blocks.0.gamma_2", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
            "blocks.0.attn.qkv.weight", "blocks.0.attn.relative_position_bias_table", "fc_norm.weight",
            "cls_token"} <= keys
    # no k bias, no saved index, no absolute position embedding, no final norm (fc_norm instead)
    assert not {"blocks.0.attn.k_bias", "blocks.0.attn.qkv.bias", "blocks.0.attn.relative_position_index",
                "pos_embed", "norm.weight"} & keys


# ---- 2. equal to timm ------------------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on the degenerate tensors (zero q/v biases, unit norms, LayerScale gains), a large one on the zero-init
    relative position bias tables, and a plain random head: BEiT scales its head by 0.001 at init, which would
    leave logits too small to show a mistake."""
    return perturb(model, params={"*relative_position_bias_table": redraw_normal(1.0),
                                  "head.weight": redraw_normal(0.1)})


@pytest.mark.timm
def test_timm_parity(timm):
    ours, theirs = timm_pair(timm, "beit_base_patch16_224", perturb_with=_perturb, depth=2)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224), min_spread=100 * TOL) <= TOL


NARROW = dict(depth=2, embed_dim=64, num_heads=4)
OPTIONS = [
    {"use_rel_pos_bias": False, "use_shared_rel_pos_bias": True, "use_abs_pos_emb": True},
    {"init_values": 0.0},  # no LayerScale (timm's create_model drops None-valued options, so not None)
    {"global_pool": "token"},
    {"qkv_bias": False, "img_size": 160},
]


@pytest.mark.timm
@pytest.mark.parametrize("overrides", OPTIONS, ids=str)
def test_timm_parity_options(timm, overrides):
    ours, theirs = timm_pair(timm, "beit_base_patch16_224", perturb_with=_perturb, **NARROW, **overrides)
    size = overrides.get("img_size", 224)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, size, size), min_spread=100 * TOL) <= TOL


@pytest.mark.timm
def test_timm_intermediates(timm):
    """Our per-block tokens (B, N, D), without [CLS] and laid out as a grid, are timm's NCHW intermediates."""
    ours, theirs = timm_pair(timm, "beit_base_patch16_224", perturb_with=_perturb, **NARROW)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        final, blocks = ours.forward_intermediates(x)
        t_final, t_blocks = theirs.forward_intermediates(x)
    assert len(blocks) == len(ours.feature_info) == 2
    for a, b in zip(blocks, t_blocks):
        assert a.shape == (1, 1 + 196, 64)
        torch.testing.assert_close(a[:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2), b, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, t_final, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224), min_spread=100 * TOL) <= TOL


# ---- 3. the relative position bias and attention -----------------------------------------------------------------
def test_rel_pos_bias_changes_the_output_and_depends_on_position():
    """A non-zero table changes the logits; the same table read through a shuffled index changes them again:
    the bias depends on where tokens are, not just on the table's values."""
    model = vitkit.create_model("beit_base_patch16_224", **BEIT_TINY).eval()
    _perturb(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        attn = model.blocks[0].attn
        attn.relative_position_index.copy_(attn.relative_position_index.flip(0))
        assert not torch.allclose(model(x), y, atol=1e-4)


def test_recorded_attention_equals_fused():
    model = vitkit.create_model("beit_base_patch16_224", **{**BEIT_TINY, "img_size": 64}).eval()
    _perturb(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        rec = AttentionRecorder()
        for i, block in enumerate(model.blocks):
            block.attn.recorder, block.attn.name = rec, f"blocks.{i}"
        recorded = model(x)
    torch.testing.assert_close(recorded, fused, rtol=0, atol=1e-5)
    assert set(rec.maps) == {"blocks.0", "blocks.1"}
    w = rec.maps["blocks.0"][0]
    assert w.shape == (2, 2, 17, 17)  # (B, heads, 1 + 4·4, 1 + 4·4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 17))


def test_attention_has_no_k_bias():
    """Adding a constant to every key cannot change a softmax over keys, so BEiT drops the k bias: k_bias is a
    zero buffer, and q/v biases are parameters."""
    attn = BeitAttention(16, 2, qkv_bias=True)
    assert isinstance(attn.q_bias, torch.nn.Parameter) and isinstance(attn.v_bias, torch.nn.Parameter)
    assert "k_bias" not in dict(attn.named_parameters()) and attn.k_bias.eq(0).all()
    assert attn.qkv.bias is None


# ---- 4. image sizes and init -----------------------------------------------------------------------------------
def test_wrong_image_size_is_refused():
    model = vitkit.create_model("beit_base_patch16_224", **BEIT_TINY)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 48, 48))
    msg = str(err.value)
    assert "32×32" in msg and "48×48" in msg and "2×2 patch grid" in msg and "img_size=(48, 48)" in msg


def test_init_weights():
    model = vitkit.create_model("beit_base_patch16_224", depth=3, embed_dim=64, num_heads=4, img_size=64)
    assert model.blocks[0].gamma_1.eq(0.1).all() and model.blocks[2].gamma_2.eq(0.1).all()
    assert model.blocks[1].attn.relative_position_bias_table.eq(0).all()
    assert model.blocks[1].attn.q_bias.eq(0).all()
    # output projections rescaled by 1/√(2·(layer+1)): block 2's std is 0.02/√6
    assert 0.006 < model.blocks[2].attn.proj.weight.std() < 0.0105
    assert model.head.weight.abs().max() < 0.001 and model.head.bias.eq(0).all()  # head scaled by 0.001
    assert model.no_weight_decay() >= {"cls_token", "blocks.0.attn.relative_position_bias_table"}
