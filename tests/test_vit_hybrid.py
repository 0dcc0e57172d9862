"""Hybrid ResNet → ViT (vit_small_r26_s32_224): parameter count, equality with timm, the BiT conv layers,
'SAME' padding arithmetic, feature info and input checks."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers import ImageSizeError
from vitkit.layers.conv import GroupNormAct, MaxPool2dSame, StdConv2d
from vitkit.models import VisionTransformer
from vitkit.models.resnetv2 import ResNetV2, make_divisible
from vitkit.models.vit_hybrid import HybridEmbed, HybridVisionTransformer
from vitkit.registry import HALF

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, timm_pair

NAME = "vit_small_r26_s32_224"
TINY = vitkit.get_entry(NAME).tiny


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Randomise what starts degenerate (GroupNorm / LayerNorm gains and biases, zero biases, the [CLS] token),
    so that none of it hides a mistake. Conv and Linear weights, and position embeddings, are random already."""
    return perturb(model, scale=0.1)


# ---- 1. parameter count and keys ----------------------------------------------------------------------------
def test_param_count():
    assert n_params(meta_model(NAME)) == 36_431_912  # 1000-class head, as timm counts


def test_stem_and_token_grid_shapes():
    """(Keys and shapes as a whole are compared with timm's in test_models.py.)"""
    state = meta_model(NAME).state_dict()
    assert state["patch_embed.backbone.stem.conv.weight"].shape == (64, 3, 7, 7)
    assert state["pos_embed"].shape == (1, 1 + 7 * 7, 384)  # 224 / 32 = 7 tokens a side


def test_the_vit_part_is_vitkits_vision_transformer():
    model = vitkit.create_model(NAME, **TINY)
    assert isinstance(model, VisionTransformer) and isinstance(model.patch_embed, HybridEmbed)
    assert isinstance(model.patch_embed.backbone, ResNetV2)


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
# The R26 backbone is always whole (timm fixes its depth); the ViT part is cut where noted.
PARITY = [({"img_size": 64, "depth": 2}, (64, 64)), ({"img_size": 96}, (96, 96))]


@pytest.mark.timm
@pytest.mark.parametrize("overrides,size", PARITY, ids=str)
def test_timm_parity(timm, overrides, size):
    ours, theirs = timm_pair(timm, NAME, perturb_with=_perturb, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, *size)) <= TOL


@pytest.mark.timm
def test_timm_parity_dynamic_img_size(timm):
    """Built at 64, run at other sizes (70×90: odd maps under 'SAME' padding): both resample the same way."""
    ours, theirs = timm_pair(timm, NAME, perturb_with=_perturb, img_size=64, depth=2, dynamic_img_size=True)
    for size in [(96, 96), (64, 160), (70, 90)]:
        assert max_logit_diff(ours, theirs, torch.randn(2, 3, *size)) <= TOL, size


@pytest.mark.timm
def test_intermediates_and_feature_info_match_timm(timm):
    ours, theirs = timm_pair(timm, NAME, perturb_with=_perturb, img_size=64, depth=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, blocks = ours.forward_intermediates(x)
        their_final, their_blocks = theirs.forward_intermediates(x, output_fmt="NLC")
    assert len(blocks) == len(their_blocks) == 3
    torch.testing.assert_close(final, their_final, rtol=0, atol=1e-5)
    for a, b in zip(blocks, their_blocks):
        assert a.shape == (2, 1 + 2 * 2, 384)
        torch.testing.assert_close(a[:, 1:], b, rtol=0, atol=1e-5)  # timm returns the patch tokens only
    assert ours.feature_info == [{k: d[k] for k in ("num_chs", "reduction", "module")} for d in theirs.feature_info]
    assert {d["reduction"] for d in ours.feature_info} == {32}


@pytest.mark.slow
@pytest.mark.timm
def test_timm_parity_full_size(timm):
    ours, theirs = timm_pair(timm, NAME, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. the BiT conv layers, against timm's ----------------------------------------------------------------
@pytest.mark.timm
@pytest.mark.parametrize("kernel,stride", [(7, 2), (3, 2), (1, 2), (3, 1), (1, 1)])
@pytest.mark.parametrize("size", [(17, 17), (16, 21)], ids=str)
def test_std_conv_same_matches_timm(timm, kernel, stride, size):
    ours = StdConv2d(4, 6, kernel, stride=stride, padding="same", eps=1e-8)
    theirs = timm.layers.StdConv2dSame(4, 6, kernel, stride=stride, eps=1e-8)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, *size)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == b.shape == (2, 6, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.timm
def test_std_conv_symmetric_padding_matches_timm(timm):
    ours, theirs = StdConv2d(4, 6, 3, stride=2, bias=True), timm.layers.StdConv2d(4, 6, 3, stride=2, bias=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 15, 15)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_std_conv_standardises_each_filter():
    conv = StdConv2d(3, 5, 3)
    with torch.no_grad():
        conv.weight.mul_(7).add_(2)
    w = conv.standardized_weight().reshape(5, -1)
    torch.testing.assert_close(w.mean(dim=1), torch.zeros(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(w.var(dim=1, unbiased=False), torch.ones(5), rtol=0, atol=1e-4)


@pytest.mark.timm
@pytest.mark.parametrize("size", [(16, 16), (17, 14)], ids=str)
def test_max_pool_same_matches_timm(timm, size):
    x = torch.randn(2, 3, *size) - 5  # all negative: zero padding would win the max, -inf padding must not
    theirs = timm.layers.create_pool2d("max", kernel_size=3, stride=2, padding="same")
    torch.testing.assert_close(MaxPool2dSame(3, 2)(x), theirs(x), rtol=0, atol=0)


@pytest.mark.timm
def test_group_norm_act_matches_timm(timm):
    for act in (True, False):
        ours, theirs = GroupNormAct(64, 32, act=act), timm.layers.GroupNormAct(64, 32, apply_act=act)
        _perturb(theirs)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 64, 5, 5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        assert (ours(x).min() >= 0) == act


def test_group_norm_refuses_indivisible_widths():
    with pytest.raises(ValueError, match="divisible by 32"):
        GroupNormAct(48, 32)


@pytest.mark.timm
def test_make_divisible_matches_timm(timm):
    for v in [3, 4, 7.5, 16, 20, 33, 64, 100, 127.9, 256, 1000]:
        assert make_divisible(v) == timm.layers.make_divisible(v), v


# ---- 4. the backbone's map size, feature info, init and input checks --------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (65, 50), (33, 97), (1, 1)], ids=str)
def test_backbone_feature_size_is_what_it_computes(size):
    """HybridEmbed sizes the position embeddings from feature_size without running the backbone (so the model
    builds on the meta device); it must equal the map the backbone really returns."""
    backbone = ResNetV2(layers=(1, 1, 1, 1), channels=(16, 32, 32, 32), stem_chs=16, num_groups=4).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, *size))
    assert tuple(out.shape[-2:]) == backbone.feature_size(*size)
    assert backbone.reduction == 32 and out.shape[1] == backbone.num_features == 32


def test_r50_style_backbone_has_stride_16():
    model = vitkit.create_model(NAME, **{**TINY, "backbone_layers": (1, 1, 1)})  # 3 stages, as R50 + ViT-B/16
    assert model.patch_embed.grid_size == (4, 4) and model.feature_info[0]["reduction"] == 16
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_init_weights():
    model = vitkit.create_model(NAME, **TINY)
    backbone = model.patch_embed.backbone
    assert backbone.stem.norm.weight.eq(1).all() and not backbone.stem.norm.bias.any()
    assert not model.patch_embed.proj.bias.any()
    proj = model.patch_embed.proj.weight  # LeCun normal on fan_in = 32 channels
    assert abs(proj.std().item() / (1 / 32) ** 0.5 - 1) < 0.1
    assert model.cls_token.abs().max() < 1e-4


def test_wrong_channel_count_is_refused():
    model = vitkit.create_model(NAME, **TINY)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 1, 64, 64))
    msg = str(err.value)
    assert "3-channel" in msg and "1 channel" in msg and "in_chans=1" in msg


def test_wrong_image_size_is_refused():
    model = vitkit.create_model(NAME, **TINY)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 96, 96))
    msg = str(err.value)
    assert "64×64" in msg and "96×96" in msg and "dynamic_img_size" in msg


def test_one_channel_model():
    model = vitkit.create_model(NAME, **TINY, in_chans=1, num_classes=10)
    assert model.patch_embed.backbone.stem.conv.weight.shape[1] == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_registry_entry():
    entry = vitkit.get_entry(NAME)
    assert entry.family == "vit_hybrid" and (entry.mean, entry.std) == (HALF, HALF)
    assert entry.builder is HybridVisionTransformer
    cfg = vitkit.model_config(NAME)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, 12, 6, 1)
    assert cfg.backbone_layers == (2, 2, 2, 2)
