"""Swin Transformer: parameter counts, equality with timm, image sizes, recorded attention."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers.attention import AttentionRecorder
from vitkit.layers.patch_embed import ImageSizeError
from vitkit.models.swin import SWIN_TINY, SwinBlock, WindowAttention

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, redraw_normal, timm_pair

NAMES = ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]
PARAM_COUNTS = {  # with the 1000-class head, as timm and the paper count them
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
}


# ---- 1. parameter counts and keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


# ---- 2. equal to timm ------------------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on the degenerate tensors (zero biases, unit norms), and a large one on the relative position bias
    tables so that a wrong index or a missing mask shows in the logits."""
    return perturb(model, params={"*relative_position_bias_table": redraw_normal(1.0)})


# Reduced depths (and, away from 224, widths) keep the default run fast; two blocks per stage keep a shifted
# block in every stage whose map is larger than its window. Both libraries take the same overrides.
NARROW = {"embed_dim": 32, "num_heads": (1, 2, 4, 8)}


@pytest.mark.timm
def test_timm_parity_and_intermediates(timm):
    """Swin-T widths, two blocks per stage: logits, per-stage outputs (channels-first, as timm's) and the final
    map equal timm's."""
    ours, theirs = timm_pair(timm, "swin_tiny_patch4_window7_224", perturb_with=_perturb, depths=(2, 2, 2, 2))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # one pass each: the logits come from the final map
        final, stages = ours.forward_intermediates(x)
        t_final, t_stages = theirs.forward_intermediates(x)
        logits, t_logits = ours.forward_head(final), theirs.forward_head(t_final)
    assert logits.shape == (2, 1000) and (t_logits[0] - t_logits[1]).abs().max() > 100 * TOL
    assert (logits - t_logits).abs().max() <= TOL
    assert [tuple(s.shape) for s in stages] == [(2, 96, 56, 56), (2, 192, 28, 28), (2, 384, 14, 14), (2, 768, 7, 7)]
    assert [i["num_chs"] for i in ours.feature_info] == [i["num_chs"] for i in theirs.feature_info]
    assert [i["reduction"] for i in ours.feature_info] == [4, 8, 16, 32]
    for a, b in zip(stages, t_stages):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    torch.testing.assert_close(final, t_final, rtol=0, atol=1e-4)


@pytest.mark.timm
def test_timm_parity_at_256_with_window_8(timm):
    """Another size the windows allow: 256×256 → maps 64, 32, 16, 8, all tiled by 8×8 windows."""
    ours, theirs = timm_pair(timm, "swin_tiny_patch4_window7_224", perturb_with=_perturb, depths=(2, 2, 2, 2),
                             img_size=256, window_size=8, **NARROW)
    assert ours.stage_window_sizes == [(8, 8)] * 4
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 256, 256), min_spread=100 * TOL) <= TOL


@pytest.mark.timm
def test_timm_parity_small_image_shrinks_windows(timm):
    """At 64×64 with window 4 the maps are 16, 8, 4, 2: stages 0-1 are tiled and shifted, stage 2 is one window
    (no shift), and stage 3's window shrinks to its 2×2 map (bias table built for 2×2), in both libraries."""
    ours, theirs = timm_pair(timm, "swin_tiny_patch4_window7_224", perturb_with=_perturb, depths=(2, 2, 2, 2),
                             img_size=64, window_size=4, **NARROW)
    assert ours.stage_window_sizes == [(4, 4), (4, 4), (4, 4), (2, 2)]
    assert [s.blocks[1].shift_size for s in ours.layers] == [(2, 2), (2, 2), (0, 0), (0, 0)]
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 64, 64), min_spread=100 * TOL) <= TOL


@pytest.mark.slow
@pytest.mark.timm
def test_timm_parity_base_reduced_depth(timm):
    ours, theirs = timm_pair(timm, "swin_base_patch4_window7_224", perturb_with=_perturb, depths=(1, 1, 2, 1))
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224), min_spread=100 * TOL) <= TOL


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224), min_spread=100 * TOL) <= TOL


# ---- 3. image sizes --------------------------------------------------------------------------------------------
def test_size_rule():
    model = meta_model("swin_tiny_patch4_window7_224")
    assert model.size_step == (224, 224)  # 4 · lcm(8, 7, 14, 28, 56)
    assert meta_model("swin_tiny_patch4_window7_224", img_size=256, window_size=8).size_step == (256, 256)
    # at 64 with window 4, stage 3's window shrinks to its 2×2 map: 4 · lcm(8, 4, 8, 16, 16)
    assert meta_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4).size_step == (64, 64)


def test_bad_input_size_is_refused():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN_TINY).eval()  # 64×64, window 2
    assert model.size_step == (64, 64)  # stage 3's 2×2 map needs s / (4·8) to be a multiple of 2
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 72, 72))
    msg = str(err.value)
    assert "72×72" in msg and "multiples of 64×64" in msg and "resize to 64×64" in msg and "window" in msg
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 64)).shape == (1, 1000)  # another tiling size works


def test_full_model_refuses_256_and_takes_448():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=8,
                                num_heads=(1, 1, 1, 1)).eval()
    with pytest.raises(ImageSizeError, match="multiples of 224×224"):
        model(torch.randn(1, 3, 256, 256))
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 448, 448)).shape == (1, 14, 14, 64)


def test_bad_build_size_is_refused():
    with pytest.raises(ImageSizeError, match="built for a 256×256 image"):
        meta_model("swin_tiny_patch4_window7_224", img_size=256)  # 64 % 7 ≠ 0


def test_channel_and_batch_errors():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN_TINY)
    with pytest.raises(ImageSizeError, match="in_chans=1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ImageSizeError, match="unsqueeze"):
        model(torch.randn(3, 64, 64))


# ---- 4. recorded attention -------------------------------------------------------------------------------------
def test_recorded_attention_equals_fused():
    """With a recorder on every window attention the explicit path runs; logits equal the fused path's,
    and every block's weights map onto the image with rows summing to one."""
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN_TINY).eval()
    _perturb(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        rec = AttentionRecorder()
        blocks = {n: m for n, m in model.named_modules() if isinstance(m, SwinBlock)}
        for n, b in blocks.items():
            b.attn.recorder, b.attn.name = rec, n
        recorded = model(x)
    torch.testing.assert_close(recorded, fused, rtol=0, atol=1e-5)
    assert set(rec.maps) == set(blocks)
    grids = {0: 16, 1: 8, 2: 4, 3: 2}
    for n, b in blocks.items():
        (w,) = rec.maps[n]
        g = grids[int(n.split(".")[1])]
        img = b.image_attention(w, (g, g))
        assert img.shape == (2, b.attn.num_heads, g * g, g * g)
        torch.testing.assert_close(img.sum(-1), torch.ones(img.shape[:-1]))
    # the shifted block of stage 1 (8×8 map, window 2, shift 1): no query in the top row attends to the bottom row
    shifted = blocks["layers.1.blocks.1"]
    assert shifted.shift_size == (1, 1)
    img = shifted.image_attention(rec.maps["layers.1.blocks.1"][0], (8, 8))
    assert (img[:, :, :8, -8:] == 0).all() and (img[:, :, :8, :16] > 0).any()


# ---- 5. odds and ends ------------------------------------------------------------------------------------------
def test_no_weight_decay_lists_the_bias_tables():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN_TINY)
    nwd = model.no_weight_decay()
    n_attn = sum(isinstance(m, WindowAttention) for m in model.modules())
    assert len(nwd) == n_attn == sum(SWIN_TINY["depths"])
    assert all(n.endswith("attn.relative_position_bias_table") for n in nwd)
    assert "relative_position_index" not in " ".join(model.state_dict())  # a buffer rebuilt, never saved


def test_init_weights():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN_TINY)
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert 0.01 < table.std() < 0.03  # normal, std 0.02 (timm's truncation is at ±2, far out)
    assert 0.015 < model.layers[1].downsample.reduction.weight.std() < 0.025
    assert model.layers[0].blocks[0].attn.qkv.bias.eq(0).all()


def test_config_options_reach_the_model():
    model = meta_model("swin_tiny_patch4_window7_224", depths=(1, 1, 3, 1), num_heads=(2, 4, 8, 16),
                       embed_dim=64, num_classes=7)
    assert [len(s.blocks) for s in model.layers] == [1, 1, 3, 1]
    assert model.layers[2].blocks[0].attn.num_heads == 8 and model.num_features == 512
    assert model.head.fc.out_features == 7
    with pytest.raises(ValueError, match="same number of stages"):
        meta_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2))
