"""CoAtNet: parameter counts, equality with timm, relative attention, MBConv parts, image sizes."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import vitkit
from vitkit.layers.attention import AttentionRecorder, AttentionBase
from vitkit.layers.mbconv import MbConv, make_divisible
from vitkit.layers.patch_embed import ImageSizeError
from vitkit.layers.rel_pos import RelativePositionBias
from vitkit.models.maxxvit import Attention2d, TransformerBlock2d

from parity import (BN_STATS_NOISE, TOL, add_noise, max_logit_diff, meta_model, n_params, pair_with, perturb,
                    timm_pair)

NAMES = ["coatnet_0_rw_224", "coatnet_nano_rw_224"]
TIMM_CFG = {"coatnet_0_rw_224": "coatnet_0_rw", "coatnet_nano_rw_224": "coatnet_nano_rw"}
REDUCED = dict(embed_dim=(32, 64, 96, 128), depths=(1, 2, 2, 1), stem_width=(16, 32))  # strided and not
PARAM_COUNTS = {"coatnet_0_rw_224": 27_435_562, "coatnet_nano_rw_224": 15_141_244}  # timm's, 1000 classes


def tiny(name: str = "coatnet_0_rw_224", **overrides) -> torch.nn.Module:
    return vitkit.create_model(name, **{**vitkit.get_entry(name).tiny, **overrides})


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Make every tensor matter: noise on zero/one-initialised parameters, large noise on the position tables
    (at init scale a wrongly indexed table moves logits by barely 1e-4), and non-trivial BatchNorm statistics."""
    return perturb(model, params={"*relative_position_bias_table*": add_noise(1.0)}, buffers=BN_STATS_NOISE)


# ---- 1. parameter counts and state-dict layout ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_normalisation_matches_timm(timm, name):
    cfg = timm.models.get_pretrained_cfg(name)
    entry = vitkit.get_entry(name)
    assert (entry.family, entry.mean, entry.std) == ("coatnet", tuple(cfg.mean), tuple(cfg.std))


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_reduced(timm, name):
    """timm's MaxxVit built from a narrowed, shallower copy of its config, and ours from the same overrides."""
    from timm.models.maxxvit import MaxxVit, model_cfgs
    theirs = MaxxVit(dataclasses.replace(model_cfgs[TIMM_CFG[name]], **REDUCED), img_size=224)
    ours, theirs = pair_with(theirs, name, perturb_with=_perturb, **REDUCED)
    assert max_logit_diff(ours, theirs, torch.randn(1, 3, 224, 224)) <= TOL


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. relative attention -------------------------------------------------------------------------------------
def test_rel_pos_bias_indexing_by_hand():
    """CoAtNet reads Swin's layout (layers/rel_pos.py): bias[h, q, k] = table[(Δrow + Wh-1)(2Ww-1) + Δcol + Ww-1, h],
    Δ = query − key."""
    rel = RelativePositionBias((2, 3), num_heads=2)
    with torch.no_grad():
        rel.relative_position_bias_table.copy_(torch.arange(3 * 5 * 2.0).view(15, 2))
    bias = rel()
    assert bias.shape == (2, 6, 6)
    table = rel.relative_position_bias_table
    # token n sits at (n // 3, n % 3); q=(0,0) k=(1,2): Δ=(-1,-2) → entry 0;  q=(1,2) k=(0,0): Δ=(1,2) → entry 14
    assert torch.equal(bias[:, 0, 5], table[0]) and torch.equal(bias[:, 5, 0], table[14])
    assert torch.equal(bias[:, 4, 4], table[1 * 5 + 2])  # zero offset: the centre of the table
    assert torch.equal(bias[1, 1, 2], table[1 * 5 + 1, 1])  # q=(0,1) k=(0,2): Δ=(0,-1)


def _record(model) -> tuple[AttentionRecorder, int]:
    rec = AttentionRecorder()
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionBase)]
    for n, m in mods:
        m.recorder, m.name = rec, n
    return rec, len(mods)


def test_recorded_attention_equals_fused():
    model = _perturb(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        rec, n_attn = _record(model)
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)
    assert n_attn == 2 and len(rec.maps) == n_attn  # one 'T' block in each of the last two stages
    for name, (w,) in rec.maps.items():
        heads = model.get_submodule(name).num_heads
        side = {"stages.2.blocks.0.attn": 4, "stages.3.blocks.0.attn": 2}[name]  # the block's output map
        assert w.shape == (2, heads, side * side, side * side)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


def test_attention_sees_its_bias():
    """A table that forbids every offset but 'key one column right of the query' makes each such query
    attend to exactly that key: the bias reaches the scores, with the right sign."""
    attn = Attention2d(16, 16, (3, 4), dim_head=8).eval()
    attn.recorder, attn.name = AttentionRecorder(), "attn"
    with torch.no_grad():
        table = attn.rel_pos.relative_position_bias_table
        table.fill_(-1e4)
        table[(0 + 2) * 7 + (-1 + 3)] = 0.0  # Δ = query − key = (0, -1)
        attn(torch.randn(1, 16, 3, 4))
    (w,) = attn.recorder.maps["attn"]
    for q in range(12):
        if q % 4 < 3:
            assert w[0, :, q, q + 1].min() > 0.999


def test_rel_pos_tables_are_not_decayed():
    model = tiny()
    nwd = model.no_weight_decay()
    tables = {n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")}
    assert nwd == tables and len(tables) == 2


# ---- 4. MBConv ---------------------------------------------------------------------------------------------------
def test_make_divisible():
    assert [make_divisible(v) for v in (64, 60, 12, 3, 100)] == [64, 64, 16, 8, 104]


@pytest.mark.parametrize("mode", ["dw", "pool"])
def test_mbconv_downsamples(mode):
    block = MbConv(8, 16, stride=2, stride_mode=mode).eval()
    assert block(torch.randn(2, 8, 10, 10)).shape == (2, 16, 5, 5)
    assert isinstance(block.down, torch.nn.Identity) == (mode == "dw")
    assert block.conv2_kxk.stride == ((1, 1) if mode == "pool" else (2, 2))


def test_mbconv_widths_follow_expand_output():
    """MaxViT widens from the output width; timm's rw CoAtNets from the input width."""
    assert MbConv(16, 32, 2, expand_output=True).conv1_1x1.out_channels == 128
    rw = MbConv(16, 32, 2, expand_output=False, se_ratio=0.25)
    assert rw.conv1_1x1.out_channels == 64 and rw.se.fc1.out_channels == 16


def test_se_early_moves_the_gate():
    early, late = MbConv(8, 8, se_early=True), MbConv(8, 8, se_early=False)
    assert early.se is None and early.se_early is not None
    assert late.se_early is None and late.se is not None
    assert "se_early.fc1.weight" in early.state_dict() and "se.fc1.weight" in late.state_dict()


# ---- 5. model face and image sizes ---------------------------------------------------------------------------------
def test_feature_info_matches_intermediates():
    model = tiny().eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(torch.randn(2, 3, 64, 64))
        _, picked = model.forward_intermediates(torch.randn(2, 3, 64, 64), indices=[1, -1])
    assert [i["module"] for i in model.feature_info] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    for t, info in zip(maps, model.feature_info):
        assert t.shape == (2, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
    assert final.shape == maps[-1].shape and len(picked) == 2
    with pytest.raises(IndexError, match="5 feature levels"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[5])


def test_built_size_only():
    """The 'T' stages' position biases fix the size: 63 and 64 give the same maps; 96 does not."""
    model = tiny().eval()
    assert model(torch.randn(1, 3, 63, 63)).shape == (1, 1000)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 96, 96))
    msg = str(err.value)
    assert "96×96" in msg and "63–64" in msg and "img_size=(96, 96)" in msg
    assert tiny(img_size=96)(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_unbuildable_size_is_refused():
    with pytest.raises(ValueError, match="odd height.*95–96"):
        tiny(img_size=100)


def test_wrong_channels_are_refused():
    with pytest.raises(ImageSizeError, match="in_chans=1"):
        tiny()(torch.randn(1, 1, 64, 64))


def test_init_weights():
    """The documented scheme: EfficientNet conv init, ViT init in the attention blocks, small tables."""
    model = vitkit.create_model("coatnet_0_rw_224")
    conv = model.stages[0].blocks[0].conv1_1x1
    fan_out = conv.out_channels  # 1×1, groups 1
    assert abs(conv.weight.std().item() - math.sqrt(2 / fan_out)) < 0.1 * math.sqrt(2 / fan_out)
    block = model.stages[2].blocks[1]
    assert isinstance(block, TransformerBlock2d)
    assert 0 < block.mlp.fc1.bias.abs().max() < 1e-5 and not block.attn.qkv.bias.any()
    fan = block.attn.qkv.in_channels + block.attn.qkv.out_channels
    assert block.attn.qkv.weight.abs().max() <= math.sqrt(6 / fan)  # Xavier uniform bound
    table = block.attn.rel_pos.relative_position_bias_table
    assert 0.01 < table.std() < 0.03 and table.abs().max() <= 0.04


def test_drop_path_rises_to_the_rate():
    model = vitkit.create_model("coatnet_0_rw_224", **vitkit.get_entry("coatnet_0_rw_224").tiny, drop_path_rate=0.3)
    last = model.stages[-1].blocks[-1]
    assert last.drop_path1.p == pytest.approx(0.3)
    assert isinstance(model.stages[0].blocks[0].drop_path, torch.nn.Identity)  # the first block gets 0
