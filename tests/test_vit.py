"""The Vision Transformer: parameter counts, equality with timm, image sizes, variants and options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.layers import ImageSizeError, resample_abs_pos_embed, sincos_2d
from vitkit.models import vit_config

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, timm_pair


# ---- 1. parameter counts ------------------------------------------------------------------------------------
# With the 1000-class head, as timm and the papers count them.
PARAM_COUNTS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_224": 304_326_632,
    "vit_huge_patch14_224": 632_045_800,
}


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


def test_param_count_of_variants_follows_config():
    """A 10-class head and no head change the count by exactly the head's size."""
    full = n_params(meta_model("vit_base_patch16_224"))
    assert n_params(meta_model("vit_base_patch16_224", num_classes=10)) == full - 990 * 768 - 990
    assert n_params(meta_model("vit_base_patch16_224", num_classes=0)) == full - 1000 * 768 - 1000


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
# The common perturbation (parity.perturb: noise on biases, norms, tokens and LayerScale gains) is all a ViT needs.
PARITY = [
    ("vit_tiny_patch16_224", {}),
    ("vit_small_patch16_224", {}),
    ("vit_base_patch32_224", {}),
    ("vit_base_patch16_224", {"depth": 2}),
    ("vit_large_patch16_224", {"depth": 2}),
    ("vit_huge_patch14_224", {"depth": 2}),
]


@pytest.mark.timm
@pytest.mark.parametrize("name,overrides", PARITY, ids=[f"{n}-{o}" for n, o in PARITY])
def test_timm_parity(timm, name, overrides):
    ours, theirs = timm_pair(timm, name, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


OPTIONS = [
    {"global_pool": "avg"},
    {"class_token": False, "global_pool": "avg"},
    {"reg_tokens": 4},
    {"init_values": 1e-5},
    {"pos_embed": "none"},
]


@pytest.mark.timm
@pytest.mark.parametrize("overrides", OPTIONS, ids=str)
def test_timm_parity_options(timm, overrides):
    ours, theirs = timm_pair(timm, "vit_tiny_patch16_224", depth=3, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


DYNAMIC = [
    ({}, (160, 160)),
    ({}, (256, 192)),
    ({"reg_tokens": 4}, (192, 256)),
    ({"dynamic_img_pad": True}, (225, 250)),
]


@pytest.mark.timm
@pytest.mark.parametrize("overrides,size", DYNAMIC, ids=str)
def test_timm_parity_dynamic_img_size(timm, overrides, size):
    """Built at 224, run at another size: both libraries resample the position embeddings the same way."""
    ours, theirs = timm_pair(timm, "vit_tiny_patch16_224", depth=2, dynamic_img_size=True, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, *size)) <= TOL


@pytest.mark.timm
@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_timm_parity_resampled_to_384(timm, reg_tokens):
    """A 224 state dict moved to 384 with our resampling equals timm's, and the two models agree."""
    opts = dict(depth=2, reg_tokens=reg_tokens)
    state = perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, **opts)).state_dict()
    prefix = 1 + reg_tokens
    ours_pos = resample_abs_pos_embed(state["pos_embed"], (24, 24), num_prefix_tokens=prefix)
    theirs_pos = timm.layers.resample_abs_pos_embed(state["pos_embed"], (24, 24), num_prefix_tokens=prefix)
    assert ours_pos.shape == (1, prefix + 24 * 24, 192)
    torch.testing.assert_close(ours_pos, theirs_pos, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_pos[:, :prefix], state["pos_embed"][:, :prefix], rtol=0, atol=0)

    ours = vitkit.create_model("vit_tiny_patch16_224", img_size=384, **opts).eval()
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=384, **opts).eval()
    ours.load_state_dict({**state, "pos_embed": ours_pos}, strict=True)
    theirs.load_state_dict({**state, "pos_embed": theirs_pos}, strict=True)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 384, 384)) <= TOL


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", ["vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224"])
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. image sizes and channels ----------------------------------------------------------------------------
def test_wrong_image_size_is_refused(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **{**tiny_vit, "img_size": 64})
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 48, 48))
    msg = str(err.value)
    assert "64×64" in msg and "48×48" in msg and "dynamic_img_size" in msg


def test_patch_must_divide_dynamic_image(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit, dynamic_img_size=True)
    assert model(torch.randn(1, 3, 48, 64)).shape == (1, 1000)  # any multiple of 16 goes
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 225, 225))
    msg = str(err.value)
    assert "225" in msg and "16" in msg and "dynamic_img_pad" in msg


def test_dynamic_img_pad_takes_225(tiny_vit):
    """225×225 is zero-padded to 240×240: 15×15 patches, and the same output as padding by hand."""
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit, dynamic_img_size=True, dynamic_img_pad=True)
    model.eval()
    x = torch.randn(2, 3, 225, 225)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1 + 15 * 15, tiny_vit["embed_dim"])
        torch.testing.assert_close(model(x), model(F.pad(x, (0, 15, 0, 15))), rtol=0, atol=1e-6)


def test_dynamic_img_pad_alone_at_the_built_size(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **{**tiny_vit, "img_size": 40}, dynamic_img_pad=True)
    assert model.patch_embed.grid_size == (3, 3)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 1000)


def test_wrong_channel_count_is_refused(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 1, 32, 32))
    msg = str(err.value)
    assert "3-channel" in msg and "1 channel" in msg and "in_chans=1" in msg


def test_missing_batch_dimension_is_refused(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit)
    with pytest.raises(ImageSizeError, match="unsqueeze"):
        model(torch.randn(3, 32, 32))


def test_one_channel_model(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit, in_chans=1, num_classes=10)
    assert model.patch_embed.proj.weight.shape == (48, 1, 16, 16)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ImageSizeError):
        model(torch.randn(2, 3, 32, 32))


# ---- 4. variant names and create_model's errors --------------------------------------------------------------
def test_vit_config_b16_is_the_registered_base():
    assert vit_config("B/16") == vitkit.model_config("vit_base_patch16_224")
    assert vit_config("vit_base_patch16_224") == vitkit.model_config("vit_base_patch16_224")


@pytest.mark.parametrize("variant,width,depth,heads,patch,registered", [
    ("Ti/16", 192, 12, 3, 16, "vit_tiny_patch16_224"),
    ("S/32", 384, 12, 6, 32, "vit_small_patch32_224"),
    ("L/14", 1024, 24, 16, 14, "vit_large_patch14_224"),
    ("H/14", 1280, 32, 16, 14, "vit_huge_patch14_224"),
])
def test_vit_config_decodes(variant, width, depth, heads, patch, registered):
    cfg = vit_config(variant)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (width, depth, heads, patch, 224)
    assert cfg.mlp_ratio == 4.0
    assert cfg == vitkit.model_config(registered)


def test_vit_config_overrides():
    cfg = vit_config("S/16", num_classes=10, img_size=32)
    assert (cfg.embed_dim, cfg.num_classes, cfg.img_size) == (384, 10, 32)


@pytest.mark.parametrize("bad", ["X/16", "B16", "B/", "b/16", "vit_giant_patch14_224", "B/16/224", ""])
def test_vit_config_rejects_bad_strings(bad):
    with pytest.raises(ValueError, match="B/16"):
        vit_config(bad)


def test_unknown_option_lists_options():
    with pytest.raises(TypeError) as err:
        vitkit.create_model("vit_tiny_patch16_224", embed_dims=64)
    msg = str(err.value)
    assert "embed_dims" in msg and "embed_dim" in msg.replace("embed_dims", "") and "num_heads" in msg


def test_unknown_name_suggests():
    with pytest.raises(KeyError) as err:
        vitkit.create_model("vit_base_patch16_22")
    assert "vit_base_patch16_224" in str(err.value)


def test_create_model_records_its_name():
    assert meta_model("vit_small_patch16_224").model_name == "vit_small_patch16_224"


# ---- 5. the pre-logits layer ---------------------------------------------------------------------------------
def test_head_hidden_size(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit, head_hidden_size=64, num_classes=7).eval()
    keys = model.state_dict().keys()
    assert {"pre_logits.fc.weight", "pre_logits.fc.bias"} <= keys
    assert model.num_features == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert feats.shape == (2, 64)
        assert feats.abs().max() <= 1  # tanh
        assert model(x).shape == (2, 7)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
    assert "pre_logits.fc.weight" not in vitkit.create_model("vit_base_patch16_224", **tiny_vit).state_dict()


# ---- 6. fixed and absent position embeddings -----------------------------------------------------------------
def test_sincos_pos_embed_is_fixed(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **{**tiny_vit, "img_size": 64}, pos_embed="sincos")
    assert not model.pos_embed.requires_grad
    expected = torch.cat([torch.zeros(1, 48), sincos_2d(4, 4, 48)])[None]
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)

    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    opt.step()
    assert model.pos_embed.grad is None
    torch.testing.assert_close(model.pos_embed.detach(), before["pos_embed"], rtol=0, atol=0)
    assert not torch.equal(model.cls_token.detach(), before["cls_token"])  # the rest did train


def test_learned_pos_embed_trains(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit)
    assert model.pos_embed.requires_grad and model.pos_embed.shape == (1, 1 + 4, 48)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.any()


def _swap_quadrants(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 32, 32) with 16×16 patches → the same patches in another order (a 180° turn of the 2×2 grid)."""
    return x.reshape(*x.shape[:2], 2, 16, 2, 16).flip(2, 4).reshape(x.shape)


@pytest.mark.parametrize("pos_embed,order_matters", [("none", False), ("learn", True), ("sincos", True)])
def test_pos_embed_none_ignores_patch_order(tiny_vit, pos_embed, order_matters):
    """Without position embeddings a ViT is blind to where a patch sits; with them it is not."""
    model = vitkit.create_model("vit_base_patch16_224", **tiny_vit, pos_embed=pos_embed).eval()
    assert (model.pos_embed is None) == (pos_embed == "none")
    assert ("pos_embed" in model.state_dict()) == (pos_embed != "none")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y, y_swapped = model(x), model(_swap_quadrants(x))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()
    assert torch.allclose(y, y_swapped, atol=1e-5) != order_matters


def test_bad_options_are_refused(tiny_vit):
    with pytest.raises(ValueError, match="pos_embed"):
        vitkit.create_model("vit_base_patch16_224", **tiny_vit, pos_embed="rope")
    with pytest.raises(ValueError, match="global_pool"):
        vitkit.create_model("vit_base_patch16_224", **tiny_vit, global_pool="max")
    with pytest.raises(ValueError, match="class_token"):
        vitkit.create_model("vit_base_patch16_224", **tiny_vit, class_token=False)


# ---- per-block outputs ------------------------------------------------------------------------------------
def test_forward_intermediates_indices(tiny_vit):
    model = vitkit.create_model("vit_base_patch16_224", **{**tiny_vit, "depth": 3}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        _, chosen = model.forward_intermediates(x, indices=[0, -1])
    assert len(every) == 3 and all(t.shape == (2, 5, 48) for t in every)
    assert len(chosen) == 2
    torch.testing.assert_close(chosen[0], every[0], rtol=0, atol=0)
    torch.testing.assert_close(chosen[1], every[2], rtol=0, atol=0)
    for bad in (3, -4):
        with pytest.raises(IndexError, match="3 blocks"):
            model.forward_intermediates(x, indices=[bad])


def test_reset_classifier_refuses_an_unknown_pooling():
    model = vitkit.create_model("vit_pico_patch2_8", depth=1)
    with pytest.raises(ValueError, match="'token' or 'avg'"):
        model.reset_classifier(3, global_pool="max")
    model.reset_classifier(3, global_pool="avg")
    assert model.global_pool == "avg" and model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


# ---- forward skips what the head never reads -----------------------------------------------------------------

def _last_mlp_tokens(model, x) -> int:
    seen = []
    handle = model.blocks[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name, prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_forward_runs_the_last_mlp_on_the_prefix_tokens_only(tiny_vit, name, prefix):
    model = vitkit.create_model(name, **tiny_vit).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _last_mlp_tokens(model, x) == prefix  # 5 tokens go in; the head reads only the prefix
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), atol=1e-5, rtol=0)


def test_forward_keeps_every_token_for_avg_pooling_hooks_and_recorders(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    assert _last_mlp_tokens(vitkit.create_model("vit_tiny_patch16_224", global_pool="avg", **tiny_vit), x) == 5
    model = vitkit.create_model("vit_tiny_patch16_224", **tiny_vit).eval()
    shapes = []
    handle = model.blocks[-1].register_forward_hook(lambda m, args, out: shapes.append(out.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert shapes == [(2, 5, 48)]  # a hook on the last block sees what it would see in forward_features
    with vitkit.layers.record_attention(model, ["blocks.1.attn"]) as rec, torch.no_grad():
        model(x)
    assert rec.maps["blocks.1.attn"][0].shape == (2, 3, 5, 5)


def test_forward_trains_like_the_full_path(tiny_vit):
    model = vitkit.create_model("vit_tiny_patch16_224", **tiny_vit).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    trimmed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model.forward_head(model.forward_features(x)), y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(trimmed[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
