"""MaxViT: parameter count, equality with timm, block vs grid partitions, recorded attention, image sizes."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import vitkit
from vitkit.layers.attention import AttentionRecorder, AttentionBase
from vitkit.layers.conv import pad_same
from vitkit.layers.mbconv import SameConv2d
from vitkit.layers.patch_embed import ImageSizeError
from vitkit.layers.rel_pos_tf import RelPosBiasTf
from vitkit.models.maxxvit import (PartitionBlock, block_partition, block_reverse, grid_partition, grid_reverse,
                                   maxxvit_config)

from parity import (BN_STATS_NOISE, TOL, add_noise, max_logit_diff, meta_model, n_params, pair_with, perturb,
                    timm_pair)

NAME = "maxvit_tiny_tf_224"
PARAM_COUNT = 30_916_528  # timm's, 1000 classes
REDUCED = dict(embed_dim=(32, 32, 64, 64), depths=(1, 1, 2, 1), head_hidden_size=64, stem_width=32, dim_head=16)


def tiny(**overrides) -> torch.nn.Module:
    return vitkit.create_model(NAME, **{**vitkit.get_entry(NAME).tiny, **overrides})


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Make every tensor matter: noise on zero/one-initialised parameters, large noise on the position tables
    (at init scale a wrongly indexed table moves logits by barely 1e-4), and non-trivial BatchNorm statistics."""
    return perturb(model, params={"*relative_position_bias_table*": add_noise(1.0)}, buffers=BN_STATS_NOISE)


def _timm_pair(timm, img_size, dim_head: int = 32, **reduced):
    """timm's MaxxVit from a reduced copy of its maxvit_tiny_tf config (perturbed), and ours with its weights."""
    from timm.models.maxxvit import MaxxVit, model_cfgs
    base = model_cfgs["maxvit_tiny_tf"]
    cfg = dataclasses.replace(base, transformer_cfg=dataclasses.replace(base.transformer_cfg, dim_head=dim_head),
                              **reduced)
    return pair_with(MaxxVit(cfg, img_size=img_size), NAME, perturb_with=_perturb, img_size=img_size,
                     dim_head=dim_head, **reduced)


# ---- 1. parameter count and state-dict layout -------------------------------------------------------------
def test_param_count():
    assert n_params(meta_model(NAME)) == PARAM_COUNT


@pytest.mark.timm
def test_normalisation_matches_timm(timm):
    cfg = timm.models.get_pretrained_cfg(NAME)
    entry = vitkit.get_entry(NAME)
    assert (entry.family, entry.mean, entry.std) == ("maxvit", tuple(cfg.mean), tuple(cfg.std))


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
@pytest.mark.timm
def test_timm_parity_reduced(timm):
    """7×7 windows at 224. At 221 the stem and stage 0 get odd sizes (221, 111), so TF's 'SAME' padding
    decides where the extra pixels go in the strided convs and the pools."""
    ours, theirs = _timm_pair(timm, 224, **REDUCED)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL
    assert max_logit_diff(ours, theirs, torch.randn(1, 3, 221, 221)) <= TOL


@pytest.mark.timm
def test_timm_parity_non_square_windows(timm):
    """Built for 64×96: 2×3 windows and grids, so a swapped height and width cannot pass."""
    ours, theirs = _timm_pair(timm, (64, 96), dim_head=8, embed_dim=(16, 16, 32, 32), depths=(1, 1, 1, 1),
                              stem_width=16, head_hidden_size=32)
    assert ours.window_size == (2, 3)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 64, 96)) <= TOL


@pytest.mark.slow
@pytest.mark.timm
def test_timm_parity_full_size(timm):
    ours, theirs = timm_pair(timm, NAME, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. block and grid partitions ---------------------------------------------------------------------------
def _pixel_ids(h: int, w: int) -> torch.Tensor:
    """(1, h, w, 1) map whose value is the pixel's row-major index."""
    return torch.arange(h * w, dtype=torch.float32).view(1, h, w, 1)


def test_block_and_grid_groups_by_hand():
    """On a 4×4 map with P = 2: a block is a contiguous 2×2 window; a grid group takes every second pixel."""
    #  0  1  2  3
    #  4  5  6  7
    #  8  9 10 11
    # 12 13 14 15
    x = _pixel_ids(4, 4)
    blocks = block_partition(x, (2, 2)).squeeze(-1).long().tolist()
    grids = grid_partition(x, (2, 2)).squeeze(-1).long().tolist()
    assert blocks == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert grids == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]


def test_partitions_non_square():
    """4×6 map, P = 2×3: each group is 2 rows × 3 columns, in row-major order."""
    x = _pixel_ids(4, 6)
    assert block_partition(x, (2, 3)).squeeze(-1).long().tolist()[1] == [3, 4, 5, 9, 10, 11]
    assert grid_partition(x, (2, 3)).squeeze(-1).long().tolist()[1] == [1, 3, 5, 13, 15, 17]


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_partition_round_trip(kind):
    part, rev = {"block": (block_partition, block_reverse), "grid": (grid_partition, grid_reverse)}[kind]
    x = torch.randn(3, 6, 9, 5)
    groups = part(x, (2, 3))
    assert groups.shape == (3 * 3 * 3, 6, 5)
    torch.testing.assert_close(rev(groups, (2, 3), 6, 9), x, rtol=0, atol=0)


@pytest.mark.timm
def test_partitions_match_timm(timm):
    from timm.models import maxxvit as tm
    x = torch.randn(2, 6, 8, 3)
    torch.testing.assert_close(block_partition(x, (3, 2)), tm.window_partition(x, (3, 2)).flatten(1, 2))
    torch.testing.assert_close(grid_partition(x, (3, 2)), tm.grid_partition(x, (3, 2)).flatten(1, 2))


@pytest.mark.parametrize("kind,group", [("block", {0, 1, 4, 5}), ("grid", {0, 2, 8, 10})])
def test_attention_stays_in_its_group(kind, group):
    """Change pixel 0 of a 4×4 map: the attention branch moves only the pixels of its group (the MLP is per pixel)."""
    cfg = maxxvit_config(NAME, dim_head=8)
    layer = PartitionBlock(16, kind, (2, 2), cfg).eval()
    x = torch.randn(1, 4, 4, 16)
    y = x.clone()
    y[0, 0, 0] += torch.randn(16)  # not a constant shift, which LayerNorm would erase
    with torch.no_grad():
        changed = (layer(x) - layer(y)).abs().amax(-1).flatten() > 1e-6
    assert set(changed.nonzero().flatten().tolist()) == group


def test_partition_refuses_what_it_cannot_cut():
    with pytest.raises(ImageSizeError, match="5×4.*multiples of 2 and 2"):
        grid_partition(torch.randn(1, 5, 4, 3), (2, 2))


# ---- 4. relative attention and recording ---------------------------------------------------------------------------
def test_rel_pos_bias_tf_indexing_by_hand():
    """TF layout: bias[h, q, k] = table[h, Δrow + Wh-1, Δcol + Ww-1] with Δ = key − query."""
    rel = RelPosBiasTf((2, 3), num_heads=2)
    with torch.no_grad():
        rel.relative_position_bias_table.copy_(torch.arange(2 * 3 * 5.0).view(2, 3, 5))
    bias, table = rel(), rel.relative_position_bias_table
    assert bias.shape == (2, 6, 6)
    # token n at (n // 3, n % 3); q=(0,0) k=(1,2): Δ=(1,2) → [2, 4];  q=(1,2) k=(0,0): Δ=(-1,-2) → [0, 0]
    assert torch.equal(bias[:, 0, 5], table[:, 2, 4]) and torch.equal(bias[:, 5, 0], table[:, 0, 0])
    assert torch.equal(bias[:, 3, 3], table[:, 1, 2])  # zero offset: the centre
    assert torch.equal(bias[1, 1, 2], table[1, 1, 3])  # q=(0,1) k=(0,2): Δ=(0,1)


@pytest.mark.timm
def test_rel_pos_bias_tf_matches_timm(timm):
    ours = RelPosBiasTf((3, 4), num_heads=2)
    theirs = timm.layers.RelPosBiasTf((3, 4), num_heads=2)
    torch.nn.init.normal_(ours.relative_position_bias_table)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(), theirs.get_bias(), rtol=0, atol=0)


def test_recorded_attention_equals_fused():
    model = _perturb(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        rec = AttentionRecorder()
        mods = [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionBase)]
        for n, m in mods:
            m.recorder, m.name = rec, n
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)
    assert len(mods) == 8 and set(rec.maps) == {n for n, _ in mods}  # block + grid in each of 4 stages
    side = {0: 16, 1: 8, 2: 4, 3: 2}  # each stage's map; 2×2 groups of 4 tokens
    for name, (w,) in rec.maps.items():
        groups = (side[int(name.split(".")[1])] // 2) ** 2
        assert w.shape == (2 * groups, model.get_submodule(name).num_heads, 4, 4)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


# ---- 5. TF 'SAME' padding, image sizes, head ----------------------------------------------------------------------
def test_pad_same_puts_the_extra_pixel_last():
    """k=3, s=2: an 8-pixel side needs 1 pixel of padding (bottom/right), a 7-pixel side 2 (one each side)."""
    y = pad_same(torch.ones(1, 1, 8, 7), (3, 3), (2, 2))
    assert y.shape == (1, 1, 9, 9)
    assert y[0, 0, 8].sum() == 0 and y[0, 0, :8, 1:8].all()  # row 8 padded; columns 0 and 8 padded
    assert y[0, 0, :, 0].sum() == 0 and y[0, 0, :, 8].sum() == 0


@pytest.mark.timm
@pytest.mark.parametrize("size", [7, 8])
def test_same_conv_matches_timm(timm, size):
    ours = SameConv2d(2, 3, 3, stride=2)
    theirs = timm.layers.create_conv2d(2, 3, 3, stride=2, padding="same", bias=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, size, size)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_other_sizes_that_windows_allow():
    model = tiny().eval()  # built for 64: 2×2 windows
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 64)).shape == (1, 1000)
        assert model(torch.randn(1, 3, 63, 63)).shape == (1, 1000)  # 'same' padding rounds up


def test_sizes_windows_refuse_get_a_clear_error():
    model = tiny()
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 3, 48, 48))
    msg = str(err.value)
    assert "48×48" in msg and "partition size 2" in msg and "61–64" in msg and "125–128" in msg
    with pytest.raises(ValueError, match="partition size 4"):
        tiny(window_size=4)  # the 2×2 last stage cannot hold 4×4 windows


def test_head_hidden_layer():
    model = tiny().eval()
    assert model.num_features == 32 and "head.pre_logits.fc.weight" in model.state_dict()
    assert isinstance(model.norm, torch.nn.Identity)  # the head normalises after pooling
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(torch.randn(2, 3, 64, 64)), pre_logits=True)
    assert feats.shape == (2, 32) and feats.abs().max() <= 1  # tanh


def test_rel_pos_tables_are_not_decayed():
    model = tiny()
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if "relative_position" in n}
    assert len(model.no_weight_decay()) == 8
