"""Patch embedding, position embeddings, DropPath, LayerScale, Mlp and the encoder Block.

Each layer is checked against an independent formulation: flatten + Linear for the patch
convolution, the Vaswani formula for sinusoids, timm for resampling, the pre-LN formula for Block.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.layers import (Block, DropPath, ImageSizeError, LayerScale, Mlp, PatchEmbed, drop_path, drop_path_rates,
                           resample_abs_pos_embed, sincos_1d, sincos_2d)

# ---------------------------------------------------------------------------------------------
# 1. PatchEmbed: the convolution is "cut into P×P patches, flatten, one Linear".
# ---------------------------------------------------------------------------------------------


def patchify_linear(x: torch.Tensor, pe: PatchEmbed) -> torch.Tensor:
    """(B, C, H, W) → (B, H/P, W/P, D) by cutting patches and applying one nn.Linear."""
    B, C, H, W = x.shape
    ph, pw = pe.patch_size
    patches = x.reshape(B, C, H // ph, ph, W // pw, pw)             # (B, C, Hp, ph, Wp, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5)                       # (B, Hp, Wp, C, ph, pw)
    patches = patches.reshape(B, H // ph, W // pw, C * ph * pw)       # C·ph·pw in conv-weight order
    D = pe.proj.out_channels
    linear = nn.Linear(C * ph * pw, D)
    with torch.no_grad():
        linear.weight.copy_(pe.proj.weight.reshape(D, C * ph * pw))  # (D, C, ph, pw) → (D, C·ph·pw)
        linear.bias.copy_(pe.proj.bias)
    return linear(patches)


@pytest.mark.parametrize("img_size,patch,in_chans", [
    ((32, 32), 8, 3),
    ((24, 40), 8, 1),     # non-square image
    ((28, 14), 7, 3),
    ((16, 24), (4, 8), 3),  # non-square patches
])
def test_patch_embed_equals_flatten_and_linear(img_size, patch, in_chans):
    torch.manual_seed(0)
    pe = PatchEmbed(img_size, patch, in_chans=in_chans, embed_dim=12)
    x = torch.randn(2, in_chans, *img_size)
    out = pe(x)
    ph, pw = pe.patch_size
    assert out.shape == (2, img_size[0] // ph, img_size[1] // pw, 12)
    assert pe.grid_size == (img_size[0] // ph, img_size[1] // pw)
    assert pe.num_patches == pe.grid_size[0] * pe.grid_size[1]
    torch.testing.assert_close(out, patchify_linear(x, pe), atol=1e-5, rtol=0)


def test_patch_embed_patch_order_is_row_major():
    """The patch at grid (i, j) depends only on pixels [i·P:(i+1)·P, j·P:(j+1)·P]."""
    torch.manual_seed(1)
    pe = PatchEmbed((16, 24), 8, in_chans=1, embed_dim=4)
    x = torch.zeros(1, 1, 16, 24)
    base = pe(x)
    x[0, 0, 8:16, 16:24] = 1.0  # patch (1, 2)
    changed = (pe(x) - base).abs().sum(-1)[0] > 0
    assert changed.nonzero().tolist() == [[1, 2]]


# ---------------------------------------------------------------------------------------------
# 2. PatchEmbed errors speak to the user.
# ---------------------------------------------------------------------------------------------


def test_patch_embed_image_not_divisible_by_patch():
    pe = PatchEmbed(224, 16, dynamic=True)
    with pytest.raises(ImageSizeError) as err:
        pe(torch.zeros(1, 3, 225, 225))
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "225×225" in msg and "16" in msg
    assert "224×224" in msg and "pad" in msg  # a fix: resize to 224, or pad
    with pytest.raises(ImageSizeError, match="225×225"):
        PatchEmbed(225, 16)  # refused at construction too


def test_patch_embed_wrong_size_when_not_dynamic():
    pe = PatchEmbed(224, 16)
    with pytest.raises(ImageSizeError) as err:
        pe(torch.zeros(1, 3, 240, 240))
    msg = str(err.value)
    assert "224×224" in msg and "240×240" in msg and "dynamic_img_size" in msg
    out = PatchEmbed(224, 16, dynamic=True, embed_dim=8)(torch.zeros(1, 3, 240, 160))
    assert out.shape == (1, 15, 10, 8)


def test_patch_embed_wrong_channels():
    pe = PatchEmbed(32, 8, in_chans=3)
    with pytest.raises(ImageSizeError) as err:
        pe(torch.zeros(1, 1, 32, 32))
    msg = str(err.value)
    assert "3-channel" in msg and "1 channel" in msg and "in_chans=1" in msg


def test_patch_embed_wrong_ndim():
    pe = PatchEmbed(32, 8)
    with pytest.raises(ImageSizeError) as err:
        pe(torch.zeros(3, 32, 32))
    assert "(B, C, H, W)" in str(err.value) and "(3, 32, 32)" in str(err.value)
    assert "unsqueeze(0)" in str(err.value)


def test_patch_embed_pad():
    torch.manual_seed(2)
    pe = PatchEmbed(225, 16, pad=True, embed_dim=8)
    assert pe.grid_size == (15, 15)
    x = torch.randn(2, 3, 225, 225)
    out = pe(x)
    assert out.shape == (2, 15, 15, 8)
    padded = torch.zeros(2, 3, 240, 240)  # zero-padded at the bottom/right
    padded[:, :, :225, :225] = x
    torch.testing.assert_close(out, patchify_linear(padded, pe), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# 3. Position embeddings.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [16, 64])
def test_sincos_1d_matches_vaswani_formula(dim):
    pe = sincos_1d(60, dim)
    assert pe.shape == (60, dim)
    for pos in (0, 1, 7, 59):
        for i in (0, 1, dim // 4, dim // 2 - 1):
            angle = pos / 10000 ** (2 * i / dim)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sincos_1d_properties():
    pe = sincos_1d(128, 32)
    assert pe.abs().max() <= 1.0
    assert pe[0, 0::2].eq(0).all() and pe[0, 1::2].eq(1).all()  # position 0: sin 0, cos 0
    dist = torch.cdist(pe, pe) + torch.eye(128) * 10
    assert dist.min() > 0.1  # distinct positions get distinct embeddings
    positions = torch.tensor([0.0, 2.5, 7.0])
    torch.testing.assert_close(sincos_1d(positions, 32)[[0, 2]], pe[[0, 7]])
    with pytest.raises(ValueError, match="even"):
        sincos_1d(4, 7)


def _mae_2d_sincos(grid_h, grid_w, dim):
    """MAE's get_2d_sincos_pos_embed (facebookresearch/mae, util/pos_embed.py), restated in numpy
    and extended to non-square grids: column half first, then row; sines before cosines."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64)), axis=0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid_h,grid_w,dim", [(14, 14, 64), (4, 6, 16), (7, 3, 32)])
def test_sincos_2d_matches_mae(grid_h, grid_w, dim):
    ours = sincos_2d(grid_h, grid_w, dim).double().numpy()
    np.testing.assert_allclose(ours, _mae_2d_sincos(grid_h, grid_w, dim), atol=1e-6)


def test_sincos_2d_columns_then_rows():
    Gh, Gw, dim = 4, 6, 16
    grid = sincos_2d(Gh, Gw, dim).reshape(Gh, Gw, dim)  # row-major patch order
    cols, rows = grid[..., : dim // 2], grid[..., dim // 2:]
    assert (cols == cols[:1]).all()      # first half: the same down a column (depends on the column only)
    assert (rows == rows[:, :1]).all()   # second half: the same along a row (depends on the row only)
    assert not torch.allclose(cols[0, 0], cols[0, 1]) and not torch.allclose(rows[0, 0], rows[1, 0])


def test_resample_identity_when_sizes_equal():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_abs_pos_embed(pe, (4, 4)) is pe
    pe2 = torch.randn(1, 2 + 12, 8)
    assert resample_abs_pos_embed(pe2, (3, 4), old_size=(3, 4), num_prefix_tokens=2) is pe2


@pytest.mark.parametrize("num_prefix", [0, 1, 2])
def test_resample_keeps_prefix_tokens(num_prefix):
    torch.manual_seed(3)
    pe = torch.randn(1, num_prefix + 16, 8)
    out = resample_abs_pos_embed(pe, (6, 6), num_prefix_tokens=num_prefix)
    assert out.shape == (1, num_prefix + 36, 8)
    assert torch.equal(out[:, :num_prefix], pe[:, :num_prefix])
    # a constant grid stays constant (the interpolation weights sum to one)
    const = torch.cat([pe[:, :num_prefix], torch.full((1, 16, 8), 0.7)], dim=1)
    grid = resample_abs_pos_embed(const, (6, 6), num_prefix_tokens=num_prefix)[:, num_prefix:]
    torch.testing.assert_close(grid, torch.full((1, 36, 8), 0.7))


@pytest.mark.parametrize("old,new", [((3, 5), (6, 10)), ((4, 4), (2, 7)), ((6, 3), (3, 6))])
def test_resample_non_square_grids_keep_orientation(old, new):
    """Channel 0 holds the row index, channel 1 the column index; after resampling channel 0
    must still vary only down the rows and channel 1 only along the columns."""
    rows = torch.arange(old[0], dtype=torch.float32)[:, None].expand(old)
    cols = torch.arange(old[1], dtype=torch.float32)[None, :].expand(old)
    grid = torch.stack([rows, cols], dim=-1).reshape(1, old[0] * old[1], 2)
    pe = torch.cat([torch.full((1, 1, 2), -5.0), grid], dim=1)
    out = resample_abs_pos_embed(pe, new, old_size=old, interpolation="bilinear", antialias=False)
    assert out.shape == (1, 1 + new[0] * new[1], 2)
    g = out[0, 1:].reshape(*new, 2)
    torch.testing.assert_close(g[..., 0], g[:, :1, 0].expand(new))  # row channel: constant along a row
    torch.testing.assert_close(g[..., 1], g[:1, :, 1].expand(new))  # column channel: constant down a column
    assert (g[1:, 0, 0] >= g[:-1, 0, 0]).all() and (g[0, 1:, 1] >= g[0, :-1, 1]).all()


def test_resample_errors():
    with pytest.raises(ValueError, match="15 grid tokens.*not a square.*old_size"):
        resample_abs_pos_embed(torch.randn(1, 1 + 15, 4), (4, 4))
    with pytest.raises(ValueError, match=r"old_size \(3, 4\).*12.*15"):
        resample_abs_pos_embed(torch.randn(1, 1 + 15, 4), (4, 4), old_size=(3, 4))


@pytest.mark.timm
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("old,new,num_prefix", [
    ((14, 14), (16, 16), 1),
    ((7, 7), (10, 5), 1),
    ((4, 6), (8, 3), 2),
    ((5, 5), (3, 3), 0),    # downsampling: antialias matters
    ((16, 16), (7, 9), 1),
])
def test_resample_matches_timm(old, new, num_prefix, antialias):
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(4)
    pe = torch.randn(1, num_prefix + old[0] * old[1], 16)
    ours = resample_abs_pos_embed(pe, new, old_size=old, num_prefix_tokens=num_prefix, antialias=antialias)
    theirs = timm_layers.resample_abs_pos_embed(pe, list(new), old_size=list(old), num_prefix_tokens=num_prefix,
                                                interpolation="bicubic", antialias=antialias)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_resample_antialias_changes_downsampling():
    torch.manual_seed(5)
    pe = torch.randn(1, 1 + 64, 4)
    a = resample_abs_pos_embed(pe, (3, 3), antialias=True)
    b = resample_abs_pos_embed(pe, (3, 3), antialias=False)
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# 4. DropPath.
# ---------------------------------------------------------------------------------------------


def test_drop_path_is_identity_in_eval_and_at_zero():
    x = torch.randn(8, 5, 4)
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)
    assert torch.equal(drop_path(x, 0.9, training=False), x)
    assert "p=0.5" in repr(dp)


def test_drop_path_drops_whole_samples_and_preserves_expectation():
    torch.manual_seed(6)
    x = torch.ones(20000, 3, 4)
    out = DropPath(0.5).train()(x)
    per_sample = out.reshape(20000, -1)
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 2).all(1)
    assert (dropped | kept).all()               # all or nothing per sample, kept ones scaled by 1/(1-p)
    assert 0.48 < dropped.float().mean() < 0.52
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)
    # p = 0.25: kept samples are scaled by 4/3
    out = drop_path(torch.ones(20000, 2), 0.25, training=True)
    assert out.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)


def test_drop_path_rates_are_linear():
    rates = drop_path_rates(0.1, 12)
    assert len(rates) == 12
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert steps == pytest.approx([0.1 / 11] * 11)
    assert drop_path_rates(0.0, 4) == [0.0] * 4


# ---------------------------------------------------------------------------------------------
# 5. LayerScale, Mlp, Block.
# ---------------------------------------------------------------------------------------------


def test_layer_scale():
    ls = LayerScale(6, init_values=1e-3)
    assert torch.equal(ls.gamma.data, torch.full((6,), 1e-3))
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(ls(x), x * 1e-3)
    with torch.no_grad():
        ls.gamma.copy_(torch.arange(6.0))
    torch.testing.assert_close(ls(x), x * torch.arange(6.0))
    assert list(ls.state_dict()) == ["gamma"]


def test_mlp():
    torch.manual_seed(7)
    mlp = Mlp(8, hidden_features=32, out_features=5).eval()
    x = torch.randn(2, 3, 8)
    assert mlp(x).shape == (2, 3, 5)
    assert mlp.fc1.weight.shape == (32, 8) and mlp.fc2.weight.shape == (5, 32)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    default = Mlp(8)
    assert default.fc1.out_features == 8 and default.fc2.out_features == 8
    assert sorted(default.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]


def block_by_hand(block: Block, x: torch.Tensor, gamma1=None, gamma2=None) -> torch.Tensor:
    """x + γ₁·Attn(LN₁(x)), then x + γ₂·MLP(LN₂(x)), with attention written out in full."""
    B, N, D = x.shape
    H = block.attn.num_heads
    h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, eps=1e-6)
    q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).reshape(B, N, 3, H, D // H).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                     # (B, H, N, hd)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // H), dim=-1)
    a = (w @ v).transpose(1, 2).reshape(B, N, D) @ block.attn.proj.weight.T + block.attn.proj.bias
    x = x + (a if gamma1 is None else gamma1 * a)
    h = F.layer_norm(x, (D,), block.norm2.weight, block.norm2.bias, eps=1e-6)
    m = F.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return x + (m if gamma2 is None else gamma2 * m)


def randomize_norms(block: Block) -> None:
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)


def test_block_equals_pre_ln_formula():
    torch.manual_seed(8)
    block = Block(32, num_heads=4, mlp_ratio=2.0).eval()
    randomize_norms(block)
    x = torch.randn(2, 7, 32)
    out = block(x)
    assert out.shape == (2, 7, 32)
    torch.testing.assert_close(out, block_by_hand(block, x), atol=1e-5, rtol=0)
    assert isinstance(block.ls1, nn.Identity) and "ls1.gamma" not in block.state_dict()


def test_block_with_layer_scale():
    torch.manual_seed(9)
    block = Block(32, num_heads=4, init_values=1e-2).eval()
    assert torch.equal(block.ls1.gamma.data, torch.full((32,), 1e-2))
    assert torch.equal(block.ls2.gamma.data, torch.full((32,), 1e-2))
    assert {"ls1.gamma", "ls2.gamma"} <= set(block.state_dict())
    randomize_norms(block)
    with torch.no_grad():
        block.ls1.gamma.uniform_(0.5, 1.5)
        block.ls2.gamma.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(block(x), block_by_hand(block, x, block.ls1.gamma, block.ls2.gamma),
                               atol=1e-5, rtol=0)


def test_block_passes_mask_to_attention():
    torch.manual_seed(10)
    block = Block(16, num_heads=2).eval()
    x = torch.randn(1, 4, 16)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    out = block(x, mask=causal)
    # with a causal mask, token 0 cannot see the others: changing token 3 leaves it alone
    x2 = x.clone()
    x2[0, 3] += torch.randn(16)  # not a constant shift, which LayerNorm would remove
    out2 = block(x2, mask=causal)
    torch.testing.assert_close(out2[0, :3], out[0, :3])
    assert not torch.allclose(block(x2)[0, 0], block(x)[0, 0])


@pytest.mark.timm
def test_block_state_dict_and_output_match_timm():
    vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(11)
    ours = Block(32, num_heads=4, init_values=1e-1).eval()
    theirs = vit.Block(32, num_heads=4, qkv_bias=True, init_values=1e-1,
                       norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


# ---- Mlp and Block: the inference shortcuts compute the same numbers ---------------------------------------

def test_mlp_in_place_gelu_without_grad_equals_the_plain_formula():
    mlp = Mlp(8, 32).eval()
    x = torch.randn(3, 5, 8)
    expected = mlp.fc2(F.gelu(mlp.fc1(x)))  # with autograd on: out of place
    before = x.clone()
    with torch.no_grad():
        got = mlp(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert torch.equal(x, before)  # the input is never written


def test_mlp_with_grad_keeps_gelu_out_of_place():
    mlp = Mlp(8, 32)
    x = torch.randn(4, 8, requires_grad=True)
    mlp(x).sum().backward()  # an in-place GELU would break autograd here
    ref = Mlp(8, 32)
    ref.load_state_dict(mlp.state_dict())
    x2 = x.detach().clone().requires_grad_()
    ref.fc2(F.gelu(ref.fc1(x2))).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(mlp.fc1.weight.grad, ref.fc1.weight.grad)


def test_mlp_other_activations_are_left_alone():
    mlp = Mlp(8, 16, act_layer=nn.SiLU).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(F.silu(mlp.fc1(x))), atol=0, rtol=0)


@pytest.mark.parametrize("init_values", [None, 0.1])
def test_block_first_outputs_equal_the_first_rows(init_values):
    block = Block(24, 3, init_values=init_values).eval()
    x = torch.randn(2, 6, 24)
    full = block(x)
    for n in (1, 2):
        torch.testing.assert_close(block(x, n_out=n), full[:, :n], atol=1e-6, rtol=0)
