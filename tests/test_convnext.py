"""ConvNeXt: parameter counts, equality with timm, its layers, intermediates and input checks."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers import ImageSizeError
from vitkit.layers.conv import ConvMlp, LayerNorm2d
from vitkit.models.convnext import ConvNeXtBlock
from vitkit.registry import IMAGENET_MEAN

from parity import TOL, max_logit_diff, meta_model, n_params, pair_with, perturb, timm_pair

NAMES = ["convnext_atto", "convnext_tiny"]


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Make the degenerate initial values (zero biases, unit norms, γ = 1e-6) random, so they hide no mistakes:
    with γ at 1e-6 every block is nearly the identity and a wrong block would barely move the logits. Hence
    noise 10× the common scale."""
    return perturb(model, scale=0.2)


# ---- 1. parameter counts ------------------------------------------------------------------------------------
PARAM_COUNTS = {"convnext_atto": 3_695_520, "convnext_tiny": 28_589_128}  # 1000-class head, as timm counts


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


def test_atto_uses_conv_mlp_and_tiny_does_not():
    assert vitkit.model_config("convnext_atto").conv_mlp and not vitkit.model_config("convnext_tiny").conv_mlp
    assert meta_model("convnext_atto").state_dict()["stages.0.blocks.0.mlp.fc1.weight"].shape == (160, 40, 1, 1)
    assert meta_model("convnext_tiny").state_dict()["stages.0.blocks.0.mlp.fc1.weight"].shape == (384, 96)


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
PARITY = [("convnext_atto", {}), ("convnext_tiny", {"depths": (1, 1, 3, 1)})]


@pytest.mark.timm
@pytest.mark.parametrize("name,overrides", PARITY, ids=[f"{n}-{o}" for n, o in PARITY])
def test_timm_parity(timm, name, overrides):
    """64×64 keeps it fast; every stage still runs (the last one on a 2×2 map)."""
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 64, 64)) <= TOL


@pytest.mark.timm
def test_timm_parity_without_layer_scale(timm):
    """ls_init_value=None drops γ. (timm's create_model discards None options, so build its class directly.)"""
    opts = dict(depths=(1, 1, 1, 1), dims=(40, 80, 160, 320), conv_mlp=True)
    ours, theirs = pair_with(timm.models.convnext.ConvNeXt(**opts, ls_init_value=None), "convnext_atto",
                             perturb_with=_perturb, **opts, ls_init_value=None)
    assert "stages.0.blocks.0.gamma" not in ours.state_dict()
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 96, 96)) <= TOL


@pytest.mark.timm
def test_intermediates_and_pre_logits_match_timm(timm):
    ours, theirs = timm_pair(timm, "convnext_atto", perturb_with=_perturb, depths=(1, 1, 1, 1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, stages = ours.forward_intermediates(x)
        their_final, their_stages = theirs.forward_intermediates(x)
        ours_pre = ours.forward_head(ours.forward_features(x), pre_logits=True)
        theirs_pre = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
    assert [t.shape for t in stages] == [t.shape for t in their_stages] == [
        (2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2)]
    for a, b in zip([final, *stages, ours_pre], [their_final, *their_stages, theirs_pre]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert ours.feature_info == [{k: d[k] for k in ("num_chs", "reduction", "module")} for d in theirs.feature_info]


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. layers ------------------------------------------------------------------------------------------------
def test_conv_mlp_block_equals_linear_block():
    """conv_mlp only changes the weights' shapes: with the same numbers both blocks compute the same map."""
    linear, conv = ConvNeXtBlock(16, conv_mlp=False).eval(), ConvNeXtBlock(16, conv_mlp=True).eval()
    _perturb(linear)
    state = {k: v.reshape(conv.state_dict()[k].shape) for k, v in linear.state_dict().items()}
    conv.load_state_dict(state)
    assert isinstance(conv.mlp, ConvMlp) and isinstance(conv.norm, LayerNorm2d)
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), linear(x), rtol=0, atol=1e-5)


def test_layer_norm_2d_normalises_channels_per_pixel():
    norm = LayerNorm2d(8)
    x = torch.randn(2, 8, 3, 4) * 5 + 3
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 3, 4), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(2, 3, 4), rtol=0, atol=1e-4)
    assert norm.eps == 1e-6


@pytest.mark.timm
def test_layer_norm_2d_matches_timm(timm):
    ours, theirs = LayerNorm2d(8), timm.layers.LayerNorm2d(8)
    _perturb(theirs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


# ---- 4. initialisation, options, intermediates, input checks -------------------------------------------------
def test_init_starts_blocks_near_identity():
    model = vitkit.create_model("convnext_atto", depths=(1, 1, 1, 1))
    gammas = [b.gamma for s in model.stages for b in s.blocks]
    assert gammas and all(torch.equal(g, torch.full_like(g, 1e-6)) for g in gammas)
    w = model.stem[0].weight
    assert 0.015 < w.std().item() < 0.025  # truncated normal, std 0.02
    assert not model.head.fc.bias.any()


def test_drop_path_rises_linearly():
    model = vitkit.create_model("convnext_atto", depths=(1, 1, 1, 2), drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "p", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])


def test_bad_stage_lists_are_refused():
    with pytest.raises(ValueError, match="same number of stages"):
        vitkit.create_model("convnext_atto", depths=(1, 1, 1))


def test_forward_intermediates_indices():
    model = vitkit.create_model("convnext_atto", **vitkit.get_entry("convnext_atto").tiny).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        _, chosen = model.forward_intermediates(x, indices=[1, -1])
    assert [t.shape[1] for t in every] == [8, 16, 24, 32]
    assert [d["reduction"] for d in model.feature_info] == [4, 8, 16, 32]
    torch.testing.assert_close(chosen[0], every[1], rtol=0, atol=0)
    torch.testing.assert_close(chosen[1], every[3], rtol=0, atol=0)
    with pytest.raises(IndexError, match="4 stages"):
        model.forward_intermediates(x, indices=[4])


def test_wrong_channel_count_is_refused():
    model = vitkit.create_model("convnext_atto", **vitkit.get_entry("convnext_atto").tiny)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 1, 32, 32))
    msg = str(err.value)
    assert "3-channel" in msg and "1 channel" in msg and "in_chans=1" in msg
    with pytest.raises(ImageSizeError, match="unsqueeze"):
        model(torch.randn(3, 32, 32))


def test_too_small_image_is_refused():
    """Below 32×32 a downsampling conv would run out of pixels; say so instead of failing deep inside."""
    model = vitkit.create_model("convnext_atto", **vitkit.get_entry("convnext_atto").tiny)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 31, 64))
    assert "32×32" in str(err.value) and "31×64" in str(err.value)


def test_one_channel_model_and_other_sizes():
    model = vitkit.create_model("convnext_tiny", **vitkit.get_entry("convnext_tiny").tiny, in_chans=1,
                                num_classes=10).eval()
    assert model.stem[0].weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
        assert model(torch.randn(2, 1, 48, 80)).shape == (2, 10)  # a CNN takes any size


def test_registry_entry():
    entry = vitkit.get_entry("convnext_tiny")
    assert entry.family == "convnext" and entry.mean == IMAGENET_MEAN
    assert set(vitkit.list_models(family="convnext")) >= set(NAMES)
