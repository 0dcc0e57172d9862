"""Window partitioning, cyclic shifts, the shifted-window mask, window→image attention, and the relative
position bias index (layers/window.py, layers/rel_pos.py)."""
from __future__ import annotations

import pytest
import torch

from vitkit.layers.attention import attend
from vitkit.layers.rel_pos import (RelativePositionBias, gather_bias, num_relative_distances,
                                   relative_position_index)
from vitkit.layers.window import (cyclic_shift, shifted_window_mask, window_attention_to_image, window_partition,
                                  window_positions, window_reverse)

CASES = [  # (H, W, window, shift)
    (8, 8, 4, 2),
    (4, 4, 2, 1),
    (6, 9, 3, 1),
    (8, 6, (4, 2), (2, 1)),
    (14, 14, 7, 3),
]


# ---- partition, reverse, shift --------------------------------------------------------------------------------
@pytest.mark.parametrize("H,W,window,shift", CASES)
def test_partition_then_reverse_is_identity(H, W, window, shift):
    x = torch.randn(2, H, W, 5)
    windows = window_partition(x, window)
    wh, ww = (window, window) if isinstance(window, int) else window
    assert windows.shape == (2 * (H // wh) * (W // ww), wh * ww, 5)
    torch.testing.assert_close(window_reverse(windows, window, H, W), x, rtol=0, atol=0)


def test_partition_layout_by_hand():
    """Windows row-major over the grid, batch-major, tokens row-major inside: checked on a 4×6 map."""
    x = torch.arange(2 * 4 * 6).reshape(2, 4, 6, 1)
    w = window_partition(x, 2)[..., 0]  # (2·6, 4)
    assert w[0].tolist() == [0, 1, 6, 7]           # image 0, window (0, 0)
    assert w[1].tolist() == [2, 3, 8, 9]           # image 0, window (0, 1)
    assert w[3].tolist() == [12, 13, 18, 19]       # image 0, window (1, 0)
    assert w[6].tolist() == [24, 25, 30, 31]       # image 1, window (0, 0)
    assert window_partition(x, (1, 3))[1, :, 0].tolist() == [3, 4, 5]


def test_partition_refuses_a_window_that_does_not_tile():
    with pytest.raises(ValueError, match="7×7 windows"):
        window_partition(torch.randn(1, 8, 8, 3), 7)


@pytest.mark.parametrize("H,W,window,shift", CASES)
def test_shift_then_unshift_is_identity(H, W, window, shift):
    x = torch.randn(2, H, W, 3)
    shifted = cyclic_shift(x, shift)
    assert not torch.equal(shifted, x)
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    torch.testing.assert_close(cyclic_shift(shifted, (-sh, -sw)), x, rtol=0, atol=0)


def test_shift_moves_content_up_and_left():
    x = torch.arange(5 * 7).reshape(1, 5, 7, 1)
    s = cyclic_shift(x, (2, 3))
    for i in range(5):
        for j in range(7):
            assert s[0, i, j, 0] == x[0, (i + 2) % 5, (j + 3) % 7, 0]


# ---- the shifted-window mask ----------------------------------------------------------------------------------
def _original_coords(H, W, window, shift) -> torch.Tensor:
    """(nW, N, 2): the (row, col) in the unshifted image of each token of each shifted window."""
    rows = torch.arange(H)[:, None].expand(H, W)
    cols = torch.arange(W)[None, :].expand(H, W)
    coords = torch.stack([rows, cols], dim=-1)[None]  # (1, H, W, 2)
    return window_partition(cyclic_shift(coords, shift), window)


@pytest.mark.parametrize("H,W,window,shift", CASES)
def test_mask_allows_exactly_image_neighbours(H, W, window, shift):
    """Within a shifted window, two tokens may attend iff they were within one window's reach in the image,
    i.e. no wrap-around lies between them."""
    wh, ww = (window, window) if isinstance(window, int) else window
    coords = _original_coords(H, W, window, shift)  # (nW, N, 2)
    d = (coords[:, :, None, :] - coords[:, None, :, :]).abs()  # (nW, N, N, 2)
    expected = (d[..., 0] < wh) & (d[..., 1] < ww)
    mask = shifted_window_mask(H, W, window, shift)
    assert mask.dtype == torch.bool and mask.shape == expected.shape
    assert torch.equal(mask, expected)
    assert not mask.all()  # some window does straddle the seam


@pytest.mark.parametrize("H,W,window,shift", CASES)
def test_attend_with_mask_never_crosses_the_seam(H, W, window, shift):
    """Run attend on shifted windows with the mask: weight mass lies only on image neighbours, and every
    token keeps some attention (no row is fully masked). The fused path gives the same output."""
    B, heads, hd = 2, 3, 4
    mask = shifted_window_mask(H, W, window, shift)  # (nW, N, N)
    nW, N, _ = mask.shape
    q, k, v = (torch.randn(B * nW, heads, N, hd) for _ in range(3))
    m = mask[None].expand(B, -1, -1, -1).reshape(B * nW, 1, N, N)
    res = attend(q, k, v, mask=m, need_weights=True)
    w = res.weights  # (B·nW, heads, N, N)
    assert (w[~m.expand_as(w)] == 0).all()
    assert (w[m.expand_as(w)] > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B * nW, heads, N))
    torch.testing.assert_close(attend(q, k, v, mask=m).out, res.out, rtol=1e-5, atol=1e-5)


def test_no_shift_no_mask_needed():
    assert shifted_window_mask(8, 8, 4, 0).all()


@pytest.mark.timm
@pytest.mark.parametrize("H,W,window,shift", CASES)
def test_mask_equals_timm(timm, H, W, window, shift):
    from timm.models.swin_transformer import SwinTransformerBlock
    block = SwinTransformerBlock(8, (H, W), num_heads=2, window_size=window, shift_size=shift)
    assert torch.equal(shifted_window_mask(H, W, window, shift), block.attn_mask == 0)


# ---- window attention on the image ----------------------------------------------------------------------------
def test_window_attention_to_image_by_hand_unshifted():
    """4×4 grid, 2×2 windows, no shift: window 3 holds image positions 10, 11, 14, 15."""
    weights = torch.arange(2 * 4 * 1 * 4 * 4, dtype=torch.float32).reshape(2 * 4, 1, 4, 4) + 1
    img = window_attention_to_image(weights, (4, 4), 2, 0)
    assert img.shape == (2, 1, 16, 16)
    assert img[0, 0, 10, 15] == weights[3, 0, 0, 3]
    assert img[0, 0, 14, 11] == weights[3, 0, 2, 1]
    assert img[1, 0, 0, 5] == weights[4, 0, 0, 3]   # image 1, window 0: positions 0, 1, 4, 5
    assert img[0, 0, 0, 2] == 0                     # position 2 is in another window
    assert (img != 0).sum() == 2 * 16 * 4           # each query sees its 4 window-mates only


def test_window_attention_to_image_by_hand_shifted():
    """4×4 grid, 2×2 windows, shift 1: the rolled map's window 0 holds image (1,1), (1,2), (2,1), (2,2) =
    positions 5, 6, 9, 10; window 3 holds (3,3), (3,0), (0,3), (0,0) = 15, 12, 3, 0, in that order."""
    weights = torch.rand(4, 2, 4, 4) + 0.1
    assert window_positions((4, 4), 2, 1).tolist() == [[5, 6, 9, 10], [7, 4, 11, 8], [13, 14, 1, 2],
                                                       [15, 12, 3, 0]]
    img = window_attention_to_image(weights, (4, 4), 2, 1)
    assert img[0, 1, 5, 10] == weights[0, 1, 0, 3]
    assert img[0, 0, 15, 0] == weights[3, 0, 0, 3]
    assert img[0, 0, 3, 12] == weights[3, 0, 2, 1]
    assert img[0, 0, 5, 4] == 0  # 4 is in window 1


def test_window_attention_to_image_keeps_row_sums():
    H, W, window, shift = 8, 8, 4, 2
    mask = shifted_window_mask(H, W, window, shift)
    scores = torch.randn(3 * 4, 2, 16, 16).masked_fill(~mask.repeat(3, 1, 1)[:, None], float("-inf"))
    img = window_attention_to_image(scores.softmax(-1), (H, W), window, shift)
    torch.testing.assert_close(img.sum(-1), torch.ones(3, 2, H * W))
    # the mask's zeros land across the seam: no query in the top row attends to the bottom row
    top, bottom = torch.arange(W), torch.arange((H - 1) * W, H * W)
    assert (img[:, :, top][:, :, :, bottom] == 0).all()


# ---- relative position bias ------------------------------------------------------------------------------------
def test_relative_position_index_by_hand():
    """2×2 window, tokens (0,0) (0,1) (1,0) (1,1): offset (Δy, Δx) ∈ {-1, 0, 1}² reads row (Δy+1)·3 + (Δx+1)."""
    idx = relative_position_index(2)
    assert idx.tolist() == [[4, 3, 1, 0],
                            [5, 4, 2, 1],
                            [7, 6, 4, 3],
                            [8, 7, 5, 4]]
    assert num_relative_distances(2) == 9 and num_relative_distances((2, 3), class_token=True) == 3 * 5 + 3


@pytest.mark.parametrize("window", [(3, 3), (2, 5), (7, 7)])
def test_relative_position_index_is_one_row_per_offset(window):
    wh, ww = window
    idx = relative_position_index(window)
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    c = torch.stack([ys.flatten(), xs.flatten()], -1)
    offsets = (c[:, None] - c[None]).reshape(-1, 2)
    pairs = {(tuple(o.tolist()), int(i)) for o, i in zip(offsets, idx.flatten())}
    assert len(pairs) == len({o for o, _ in pairs}) == num_relative_distances(window)  # a bijection


def test_class_token_rows():
    idx = relative_position_index((2, 3), class_token=True)
    d = num_relative_distances((2, 3))
    assert idx.shape == (7, 7)
    assert (idx[0, 1:] == d).all() and (idx[1:, 0] == d + 1).all() and idx[0, 0] == d + 2
    assert torch.equal(idx[1:, 1:], relative_position_index((2, 3)))


def test_relative_position_bias_module():
    m = RelativePositionBias((2, 3), num_heads=4)
    assert [k for k in m.state_dict()] == ["relative_position_bias_table"]  # the index is not saved
    assert m.relative_position_bias_table.shape == (15, 4)
    with torch.no_grad():
        m.relative_position_bias_table.copy_(torch.randn(15, 4))
    bias = m()
    assert bias.shape == (4, 6, 6)
    # query (1, 2) = token 5, key (0, 0) = token 0: offset (1, 2) → row (1+1)·5 + (2+2) = 14
    torch.testing.assert_close(bias[:, 5, 0], m.relative_position_bias_table[14], rtol=0, atol=0)
    torch.testing.assert_close(gather_bias(m.relative_position_bias_table, m.relative_position_index), bias)


@pytest.mark.timm
@pytest.mark.parametrize("window", [(7, 7), (3, 5), (14, 14)])
def test_index_equals_timm(timm, window):
    from timm.models.beit import gen_relative_position_index
    from timm.models.swin_transformer import get_relative_position_index
    assert torch.equal(relative_position_index(window), get_relative_position_index(*window))
    assert torch.equal(relative_position_index(window, class_token=True), gen_relative_position_index(window))
