"""The one attention function and the modules built on it.

Every check compares vitkit against something it does not share code with: a plain reference
written here (float64, masks applied by index arithmetic), torch.nn.MultiheadAttention, or
numbers worked out by hand with Python's math module.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vitkit.layers import (Attention, AttentionRecorder, CrossAttention, attend, causal_mask, merge_masks,
                           padding_mask)

# ---------------------------------------------------------------------------------------------
# A plain reference: softmax(Q Kᵀ · scale + bias + mask) V, written without vitkit's helpers.
# ---------------------------------------------------------------------------------------------


def allowed_by_causal(n_q: int, n_k: int) -> torch.Tensor:
    """(Nq, Nk) bool: query i sits at position (Nk - Nq + i) and may see keys up to there."""
    q_pos = torch.arange(n_q)[:, None] + (n_k - n_q)
    k_pos = torch.arange(n_k)[None, :]
    return k_pos <= q_pos


def reference_attention(q, k, v, *, mask=None, bias=None, causal=False, scale=None):
    """float64 reference. mask: bool (True = may attend) or additive. Returns (out, weights)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    allowed = torch.ones(scores.shape, dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask.double()
    if bias is not None:
        scores = scores + bias.double()
    if causal:
        allowed = allowed & allowed_by_causal(n_q, n_k)
    scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=torch.float64))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v), weights


def random_bool_mask(g: torch.Generator, shape) -> torch.Tensor:
    """Random True/False mask in which every query row keeps at least one key."""
    mask = torch.rand(shape, generator=g) < 0.5
    keep = torch.randint(shape[-1], shape[:-1], generator=g)
    return mask | nn.functional.one_hot(keep, shape[-1]).bool()


def random_float_mask(g: torch.Generator, shape) -> torch.Tensor:
    """Additive mask: finite values plus some -inf, every row keeping at least one finite entry."""
    forbid = ~random_bool_mask(g, shape)
    return torch.randn(shape, generator=g).masked_fill(forbid, float("-inf"))


# (B, H, Nq, Nk, D, Dv): square self-attention, Nq ≠ Nk both ways, a single query, Dv ≠ D.
SHAPES = [
    (2, 3, 7, 7, 8, 8),
    (1, 1, 5, 9, 16, 16),
    (3, 4, 6, 11, 8, 12),
    (2, 2, 9, 4, 4, 4),
    (1, 2, 1, 13, 32, 32),
]
CASES = ["none", "bool", "bool_per_head", "float", "causal", "padding", "bias", "combined"]


def make_case(case: str, shape, seed: int):
    """Build q, k, v and the attend keyword arguments for one case (causal ones need Nk >= Nq)."""
    B, H, Nq, Nk, D, Dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g)
    k = torch.randn(B, H, Nk, D, generator=g)
    v = torch.randn(B, H, Nk, Dv, generator=g)
    kwargs = {
        "none": {},
        "bool": {"mask": random_bool_mask(g, (Nq, Nk))},
        "bool_per_head": {"mask": random_bool_mask(g, (B, H, Nq, Nk))},
        "float": {"mask": random_float_mask(g, (B, 1, Nq, Nk))},
        "causal": {"causal": True},
        "padding": {"mask": padding_mask(torch.randint(1, Nk + 1, (B,), generator=g), Nk)},
        "bias": {"bias": torch.randn(H, Nq, Nk, generator=g)},
        # key 0 stays allowed so that causality leaves every query something to see
        "combined": {"mask": random_bool_mask(g, (B, 1, Nq, Nk)) | (torch.arange(Nk) == 0),
                     "bias": torch.randn(H, Nq, Nk, generator=g), "causal": True},
    }[case]
    return q, k, v, kwargs


# ---------------------------------------------------------------------------------------------
# 1. The fused and explicit paths agree, and both agree with the reference.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,shape", [
    pytest.param(case, shape, id=f"{case}-{'x'.join(map(str, shape))}")
    for case in CASES for shape in SHAPES
    if not (case in ("causal", "combined") and shape[3] < shape[2])  # causal needs Nk >= Nq
])
def test_fused_explicit_and_reference_agree(case, shape):
    q, k, v, kwargs = make_case(case, shape, seed=100 * CASES.index(case) + SHAPES.index(shape))
    fused = attend(q, k, v, **kwargs)
    explicit = attend(q, k, v, need_weights=True, **kwargs)
    ref_out, ref_weights = reference_attention(q, k, v, **kwargs)

    assert fused.weights is None
    assert fused.out.shape == explicit.out.shape == (shape[0], shape[1], shape[2], shape[5])
    torch.testing.assert_close(fused.out, explicit.out, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit.out.double(), ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.out.double(), ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit.weights.double(), ref_weights, atol=1e-6, rtol=0)


def test_combined_case_really_masks_something():
    """Guard on the fixture: the combined case must forbid keys beyond what causality forbids."""
    q, k, v, kwargs = make_case("combined", (2, 2, 6, 9, 8, 8), seed=0)
    _, w = reference_attention(q, k, v, **kwargs)
    causal_zeros = (~allowed_by_causal(6, 9)).sum() * 2 * 2
    assert (w == 0).sum() > causal_zeros


def test_explicit_scale_argument():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    for scale in (1.0, 0.05):
        ref_out, _ = reference_attention(q, k, v, scale=scale)
        torch.testing.assert_close(attend(q, k, v, scale=scale).out.double(), ref_out, atol=1e-5, rtol=0)
        torch.testing.assert_close(attend(q, k, v, scale=scale, need_weights=True).out.double(), ref_out,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_explicit_path_in_half_precision_with_causal_and_bias(dtype):
    """A bool (causal) mask merged with a bias becomes a float32 additive mask; the explicit path
    must still add it to half-precision scores and return half-precision output, like the fused one."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    bias = torch.randn(2, 6, 6, generator=g)
    ref_out, _ = reference_attention(q, k, v, bias=bias, causal=True)
    h = [t.to(dtype) for t in (q, k, v)]
    fused = attend(*h, bias=bias.to(dtype), causal=True)
    explicit = attend(*h, bias=bias.to(dtype), causal=True, need_weights=True)
    assert explicit.out.dtype == fused.out.dtype == dtype
    torch.testing.assert_close(explicit.out.double(), ref_out, atol=5e-2, rtol=0)
    torch.testing.assert_close(fused.out.double(), ref_out, atol=5e-2, rtol=0)


# ---------------------------------------------------------------------------------------------
# 2. The weights are a probability distribution, zero where masked.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bool", "bool_per_head", "float", "padding", "combined"])
def test_weights_are_distributions_and_zero_where_masked(case):
    q, k, v, kwargs = make_case(case, (3, 2, 6, 10, 8, 8), seed=3)
    w = attend(q, k, v, need_weights=True, **kwargs).weights
    assert w.shape == (3, 2, 6, 10)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 6), atol=1e-6, rtol=0)

    forbidden = torch.zeros(w.shape, dtype=torch.bool)
    mask = kwargs.get("mask")
    if mask is not None:
        forbidden = forbidden | (~mask if mask.dtype == torch.bool else mask.isneginf())
    if kwargs.get("causal"):
        forbidden = forbidden | ~allowed_by_causal(6, 10)
    assert forbidden.any()
    assert (w[forbidden] == 0).all()   # exactly zero, not merely small
    assert (w[~forbidden] > 0).all()   # and nothing else is dropped


@pytest.mark.parametrize("n_q,n_k", [(5, 5), (4, 9)])
def test_causal_weights_are_lower_triangular(n_q, n_k):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, n_q, 8, generator=g)
    k = torch.randn(2, 3, n_k, 8, generator=g)
    w = attend(q, k, k, causal=True, need_weights=True).weights
    offset = n_k - n_q  # queries are the last Nq positions
    assert (w.triu(diagonal=offset + 1) == 0).all()
    assert (w[..., allowed_by_causal(n_q, n_k)] > 0).all()
    if n_q == n_k:
        assert w[..., 0, 0].eq(1).all()  # the first token sees only itself


# ---------------------------------------------------------------------------------------------
# 3. Attention and CrossAttention modules, the recorder, and nn.MultiheadAttention parity.
# ---------------------------------------------------------------------------------------------


def module_reference_weights(module: Attention, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The weights a self-attention module should produce, from its own qkv Linear."""
    B, N, D = x.shape
    H, hd = module.num_heads, D // module.num_heads
    qkv = module.qkv(x).reshape(B, N, 3, H, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    return reference_attention(q, k, v, **kwargs)[1]


def test_attention_module_fused_equals_recorded():
    torch.manual_seed(5)
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    fused = attn(x)

    rec = AttentionRecorder()
    attn.recorder, attn.name = rec, "blocks.0.attn"
    recorded = attn(x)
    torch.testing.assert_close(recorded, fused, atol=1e-5, rtol=0)
    assert list(rec.maps) == ["blocks.0.attn"]
    (w,) = rec.maps["blocks.0.attn"]
    assert w.shape == (2, 4, 7, 7)
    assert not w.requires_grad
    torch.testing.assert_close(w.double(), module_reference_weights(attn, x), atol=1e-6, rtol=0)

    attn(x)  # a second call appends
    assert len(rec.maps["blocks.0.attn"]) == 2

    attn.recorder = None  # detached: no more recording
    attn(x)
    assert len(rec.maps["blocks.0.attn"]) == 2


def test_recorder_keeps_only_the_asked_heads():
    torch.manual_seed(6)
    attn = Attention(24, num_heads=3).eval()
    x = torch.randn(2, 5, 24)
    full, head0 = AttentionRecorder(), AttentionRecorder(heads=[0])
    attn.name = "a"
    attn.recorder = full
    attn(x)
    attn.recorder = head0
    attn(x)
    assert full.maps["a"][0].shape == (2, 3, 5, 5)
    assert head0.maps["a"][0].shape == (2, 1, 5, 5)
    torch.testing.assert_close(head0.maps["a"][0], full.maps["a"][0][:, :1])
    assert not torch.allclose(full.maps["a"][0][:, 1], full.maps["a"][0][:, 0])  # heads do differ


def mha_from_attention(attn: Attention) -> nn.MultiheadAttention:
    D = attn.qkv.in_features
    mha = nn.MultiheadAttention(D, attn.num_heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    return mha


@pytest.mark.parametrize("masking", ["none", "bool", "causal", "key_padding"])
def test_attention_equals_torch_multihead_attention(masking):
    torch.manual_seed(7)
    B, N, D, H = 3, 6, 32, 4
    attn = Attention(D, num_heads=H).eval()
    mha = mha_from_attention(attn)
    x = torch.randn(B, N, D)

    ours_kwargs, mha_kwargs = {}, {}
    if masking == "bool":
        allowed = random_bool_mask(torch.Generator().manual_seed(8), (N, N))
        ours_kwargs["mask"] = allowed
        mha_kwargs["attn_mask"] = ~allowed  # nn.MultiheadAttention: True = NOT allowed
    elif masking == "causal":
        ours_kwargs["causal"] = True
        mha_kwargs["attn_mask"] = ~allowed_by_causal(N, N)
    elif masking == "key_padding":
        lengths = torch.tensor([6, 3, 1])
        ours_kwargs["mask"] = padding_mask(lengths, N)
        mha_kwargs["key_padding_mask"] = torch.arange(N)[None, :] >= lengths[:, None]  # True = padded

    expected, expected_w = mha(x, x, x, need_weights=True, average_attn_weights=False, **mha_kwargs)
    torch.testing.assert_close(attn(x, **ours_kwargs), expected, atol=1e-5, rtol=0)

    rec = AttentionRecorder()
    attn.recorder = rec
    torch.testing.assert_close(attn(x, **ours_kwargs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.maps[""][0], expected_w, atol=1e-6, rtol=0)


def test_cross_attention_fused_recorded_and_torch_mha():
    torch.manual_seed(9)
    B, Nq, Nk, D, Dc, H = 2, 4, 9, 32, 20, 4
    xattn = CrossAttention(D, num_heads=H, context_dim=Dc).eval()
    x, ctx = torch.randn(B, Nq, D), torch.randn(B, Nk, Dc)
    lengths = torch.tensor([9, 5])
    mask = padding_mask(lengths, Nk)

    fused = xattn(x, ctx, mask=mask)
    rec = AttentionRecorder()
    xattn.recorder, xattn.name = rec, "x"
    recorded = xattn(x, ctx, mask=mask)
    torch.testing.assert_close(recorded, fused, atol=1e-5, rtol=0)
    (w,) = rec.maps["x"]
    assert w.shape == (B, H, Nq, Nk)
    assert (w[1, :, :, 5:] == 0).all()

    # nn.MultiheadAttention with separate projections: kv.weight is [k; v] stacked.
    mha = nn.MultiheadAttention(D, H, kdim=Dc, vdim=Dc, batch_first=True).eval()
    with torch.no_grad():
        mha.q_proj_weight.copy_(xattn.q.weight)
        mha.k_proj_weight.copy_(xattn.kv.weight[:D])
        mha.v_proj_weight.copy_(xattn.kv.weight[D:])
        mha.in_proj_bias.copy_(torch.cat([xattn.q.bias, xattn.kv.bias]))
        mha.out_proj.weight.copy_(xattn.proj.weight)
        mha.out_proj.bias.copy_(xattn.proj.bias)
    expected, expected_w = mha(x, ctx, ctx, key_padding_mask=~mask[:, 0, 0], average_attn_weights=False)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, expected_w, atol=1e-6, rtol=0)


def test_attention_refuses_a_head_count_that_does_not_divide_dim():
    with pytest.raises(ValueError, match="30.*4"):
        Attention(30, num_heads=4)


# ---------------------------------------------------------------------------------------------
# 4. Attention dropout: on in training, off in eval.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recorded", [False, True], ids=["fused", "explicit"])
def test_attention_dropout_only_in_training(recorded):
    torch.manual_seed(10)
    attn = Attention(32, num_heads=4, attn_drop=0.5)
    if recorded:
        attn.recorder = AttentionRecorder()
    x = torch.randn(2, 8, 32)

    attn.eval()
    a, b = attn(x), attn(x)
    assert torch.equal(a, b)
    attn.attn_drop = 0.0
    torch.testing.assert_close(attn(x), a)  # eval with p=0.5 == no dropout at all
    attn.attn_drop = 0.5

    attn.train()
    c, d = attn(x), attn(x)
    assert not torch.allclose(c, d)
    assert not torch.allclose(c, a)
    if recorded:  # the recorded weights are the softmax, before dropout
        for w in attn.recorder.maps[""]:
            torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 8), atol=1e-6, rtol=0)


def test_attend_dropout_zeroes_weights_and_preserves_expectation():
    """With V = identity the output rows are the dropped weights: zeros and w / (1 - p)."""
    torch.manual_seed(11)
    q = torch.randn(1, 1, 4000, 8)
    k = torch.randn(1, 1, 8, 8)
    v = torch.eye(8)[None, None]
    res = attend(q, k, v, dropout_p=0.5, need_weights=True)
    kept = res.out != 0
    assert 0.45 < kept.float().mean() < 0.55
    torch.testing.assert_close(res.out[kept], 2 * res.weights[kept])
    torch.testing.assert_close(res.out.mean(-2), res.weights.mean(-2), atol=0.02, rtol=0)


# ---------------------------------------------------------------------------------------------
# 5. logits_hook and weights_hook.
# ---------------------------------------------------------------------------------------------


def test_logits_hook_sends_all_weight_to_key_0():
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))

    def boost_key_0(scores):
        return scores + torch.tensor([1e4, 0, 0, 0, 0])

    res = attend(q, k, v, logits_hook=boost_key_0)
    assert res.weights is not None  # a hook forces the explicit path
    torch.testing.assert_close(res.weights[..., 0], torch.ones(2, 2, 5))
    torch.testing.assert_close(res.out, v[:, :, :1].expand(-1, -1, 5, -1))


def test_logits_hook_sees_scaled_and_masked_scores():
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 1, 4, 8, generator=g) for _ in range(3))
    seen = []
    attend(q, k, v, causal=True, scale=0.5, logits_hook=lambda s: seen.append(s) or s)
    (scores,) = seen
    expected = (q @ k.transpose(-2, -1)) * 0.5
    lower = allowed_by_causal(4, 4)
    torch.testing.assert_close(scores[..., lower], expected[..., lower])
    assert scores[..., ~lower].isneginf().all()


def test_weights_hook_replaces_the_weights():
    g = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    res = attend(q, k, v, weights_hook=lambda w: torch.full_like(w, 1 / w.shape[-1]))
    torch.testing.assert_close(res.out, v.mean(-2, keepdim=True).expand_as(res.out))
    # talking-heads style: mixing heads after the softmax
    mix = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    plain = attend(q, k, v, need_weights=True).weights
    mixed = attend(q, k, v, weights_hook=lambda w: torch.einsum("gh,bhqk->bgqk", mix, w))
    torch.testing.assert_close(mixed.weights, plain[:, [1, 0, 2]])
    torch.testing.assert_close(mixed.out, plain[:, [1, 0, 2]] @ v)


# ---------------------------------------------------------------------------------------------
# 6. The lecture's worked examples (2-D word embeddings; Q = K = V = embeddings, d_k = 2).
#
# Source search: the lecture itself (a course on attention/ViT) was not found in the public
# pages, docs or code corpora searched ("goat sheep grazing attention", "Messi is the goat not
# Ronaldo self-attention", the printed numbers "3.77, 1.15" / "1.08, 3.79", ...). What we have is
# what our brief quotes from the lecture: the 7 embeddings of "Messi is the goat, not Ronaldo" and
# two printed outputs for "goat", ≈ [3.77, 1.15] and ≈ [1.08, 3.79], one per sentence, unassigned.
# The lecture's own 7×7 tables (scores, scaled scores, softmax rows) were not available, so the
# tables below are checked against hand/math-module values, labelled as computed here.
# The embeddings of "The sheep and goat are grazing" were not found, so that sentence is not
# reproduced here (and nothing is made up for it).
# ---------------------------------------------------------------------------------------------

MESSI_WORDS = ["Messi", "is", "the", "goat", ",", "not", "Ronaldo"]
MESSI_EMBEDDINGS = [[6, 2], [1, 1], [1, 1], [5, 3], [0, 0], [1, 0], [4, 2]]   # printed by the lecture
LECTURE_GOAT_OUTPUTS = ([3.77, 1.15], [1.08, 3.79])  # printed; which sentence is which is not stated

# Q Kᵀ for the sentence, worked out by hand from the embeddings (integers, so exact).
MESSI_SCORES = [
    [40, 8, 8, 36, 0, 6, 28],
    [8, 2, 2, 8, 0, 1, 6],
    [8, 2, 2, 8, 0, 1, 6],
    [36, 8, 8, 34, 0, 5, 26],
    [0, 0, 0, 0, 0, 0, 0],
    [6, 1, 1, 5, 0, 1, 4],
    [28, 6, 6, 26, 0, 4, 20],
]


def python_attention(emb: list[list[float]], scale: float) -> tuple[list, list, list]:
    """Scores, softmax weights and outputs with nothing but the math module."""
    scores = [[sum(a * b for a, b in zip(qi, kj)) for kj in emb] for qi in emb]
    weights = []
    for row in scores:
        m = max(row)
        e = [math.exp((s - m) * scale) for s in row]
        weights.append([x / sum(e) for x in e])
    outputs = [[sum(w * v[d] for w, v in zip(row, emb)) for d in range(len(emb[0]))] for row in weights]
    return scores, weights, outputs


@pytest.fixture
def messi_sentence():
    """vitkit's explicit path on the sentence; scaled scores captured with logits_hook."""
    x = torch.tensor(MESSI_EMBEDDINGS, dtype=torch.float64)[None, None]  # (1, 1, 7, 2)
    captured = []
    res = attend(x, x, x, need_weights=True, logits_hook=lambda s: captured.append(s) or s)
    return {
        "scaled_scores": captured[0][0, 0],
        "weights": res.weights[0, 0],
        "outputs": res.out[0, 0],
    }


def test_lecture_messi_table_scores_and_scaled_scores(messi_sentence):
    scores, _, _ = python_attention(MESSI_EMBEDDINGS, 1.0)
    assert scores == MESSI_SCORES  # the hand-worked table is right
    expected_scaled = torch.tensor(MESSI_SCORES, dtype=torch.float64) / math.sqrt(2)
    torch.testing.assert_close(messi_sentence["scaled_scores"], expected_scaled, atol=1e-12, rtol=0)
    assert messi_sentence["scaled_scores"][0, 0].item() == pytest.approx(28.28, abs=0.005)  # 40/√2
    assert messi_sentence["scaled_scores"][3, 3].item() == pytest.approx(24.04, abs=0.005)  # 34/√2


def test_lecture_messi_table_weights_and_outputs(messi_sentence):
    _, weights, outputs = python_attention(MESSI_EMBEDDINGS, 1 / math.sqrt(2))
    torch.testing.assert_close(messi_sentence["weights"], torch.tensor(weights, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(messi_sentence["outputs"], torch.tensor(outputs, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # Rows at two decimals, computed here (not printed by the lecture):
    goat = MESSI_WORDS.index("goat")
    assert messi_sentence["weights"][goat].tolist() == pytest.approx([0.80, 0, 0, 0.20, 0, 0, 0], abs=0.005)
    # "," is the zero vector: every score is 0, so it attends uniformly and gets the mean embedding.
    comma = MESSI_WORDS.index(",")
    assert messi_sentence["weights"][comma].tolist() == pytest.approx([1 / 7] * 7, abs=1e-12)
    assert messi_sentence["outputs"][comma].tolist() == pytest.approx([18 / 7, 9 / 7], abs=1e-12)
    # "is" and "the" share an embedding, so their rows are identical.
    torch.testing.assert_close(messi_sentence["weights"][1], messi_sentence["weights"][2], atol=0, rtol=0)


def test_lecture_goat_in_messi_sentence_does_not_give_the_printed_numbers(messi_sentence):
    """What the printed inputs give for "goat", and why neither printed number follows from them.

    From the printed embeddings, goat = softmax([36, 8, 8, 34, 0, 5, 26] / √2) · V
    = 0.804·Messi + 0.195·goat + 0.001·Ronaldo ≈ [5.80, 2.20].

    - [1.08, 3.79] cannot come from this sentence with ANY attention weights: an output is a
      convex combination of the value vectors, whose second coordinate is at most 3 (goat's own).
      So [1.08, 3.79] must be the sheep sentence's number ("goat" the animal), and [3.77, 1.15]
      is the one the lecture gives for "Messi is the goat, not Ronaldo".
    - [3.77, 1.15] does NOT follow from the printed inputs either. It is inside the convex hull
      of the values, but not on the path softmax(β · goat·k) · V traces for any temperature β
      (the √d_k scaling included): that path runs from the mean [2.57, 1.29] (β = 0) to Messi
      [6, 2] (β → ∞) and, where its first coordinate is 3.77, its second is ≈ 1.79, not 1.15.
      Reproducing it would take different embeddings than the ones printed, or a different
      computation than the scaled dot-product attention the lecture describes.
    """
    goat = MESSI_WORDS.index("goat")
    out = messi_sentence["outputs"][goat]
    assert out.tolist() == pytest.approx([5.80, 2.20], abs=0.005)   # what the printed inputs give
    for printed in LECTURE_GOAT_OUTPUTS:
        assert (out - torch.tensor(printed, dtype=torch.float64)).abs().max() > 1.0

    max_second = max(e[1] for e in MESSI_EMBEDDINGS)
    assert LECTURE_GOAT_OUTPUTS[1][1] > max_second  # [1.08, 3.79] is unreachable from this sentence
    assert LECTURE_GOAT_OUTPUTS[0][1] <= max_second

    emb = torch.tensor(MESSI_EMBEDDINGS, dtype=torch.float64)
    betas = torch.linspace(0, 2, 4001, dtype=torch.float64)[:, None]   # 1/√2 ≈ 0.707 is among them
    path = (betas * (emb @ emb[goat])).softmax(-1) @ emb               # (4001, 2)
    distance = (path - torch.tensor(LECTURE_GOAT_OUTPUTS[0], dtype=torch.float64)).norm(dim=-1)
    assert distance.min() > 0.5  # no temperature gives [3.77, 1.15]


def test_scaling_by_sqrt_dk_makes_the_softmax_flatter(messi_sentence):
    x = torch.tensor(MESSI_EMBEDDINGS, dtype=torch.float64)[None, None]
    unscaled = attend(x, x, x, scale=1.0, need_weights=True).weights[0, 0]
    scaled = messi_sentence["weights"]
    _, by_hand, _ = python_attention(MESSI_EMBEDDINGS, 1.0)
    torch.testing.assert_close(unscaled, torch.tensor(by_hand, dtype=torch.float64), atol=1e-12, rtol=0)

    goat = MESSI_WORDS.index("goat")
    assert scaled[goat].max() == pytest.approx(0.804, abs=0.0005)
    assert unscaled[goat].max() == pytest.approx(0.881, abs=0.0005)
    assert (scaled.amax(-1) <= unscaled.amax(-1) + 1e-12).all()   # never sharper, row by row

    def entropy(w):
        return -(w * w.clamp_min(1e-300).log()).sum(-1)

    non_uniform = [i for i, word in enumerate(MESSI_WORDS) if word != ","]
    assert (entropy(scaled)[non_uniform] > entropy(unscaled)[non_uniform]).all()


# ---------------------------------------------------------------------------------------------
# 7. Mask helpers.
# ---------------------------------------------------------------------------------------------


def test_causal_mask():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3, 3).dtype == torch.bool


def test_padding_mask():
    m = padding_mask(torch.tensor([2, 0, 4]), 4)
    assert m.shape == (3, 1, 1, 4) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False, False], [False] * 4, [True] * 4]


def test_merge_masks():
    a = torch.tensor([[True, True], [False, True]])
    b = torch.tensor([[True, False], [True, True]])
    assert merge_masks(a, None) is a
    assert merge_masks(None, b) is b
    assert merge_masks(None, None) is None

    both = merge_masks(a, b)
    assert both.dtype == torch.bool and both.tolist() == [[True, False], [False, True]]

    f = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    for merged in (merge_masks(a, f), merge_masks(f, a)):
        assert merged.is_floating_point()
        assert merged[1, 0].item() == float("-inf")
        assert merged[0].tolist() == [0.5, -1.0] and merged[1, 1].item() == 0.0
    # two float masks add
    assert merge_masks(f, f).tolist() == (2 * f).tolist()
    # broadcasting: (Nq, Nk) with (B, 1, 1, Nk)
    pad = padding_mask(torch.tensor([1, 2]), 2)
    assert merge_masks(causal_mask(2), pad).shape == (2, 1, 2, 2)


def test_merged_bool_and_float_mask_gives_the_same_attention_as_applying_both():
    g = torch.Generator().manual_seed(15)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    allowed = random_bool_mask(g, (5, 5))
    bias = torch.randn(2, 5, 5, generator=g)
    merged = merge_masks(allowed, bias)
    ref_out, _ = reference_attention(q, k, v, mask=allowed, bias=bias)
    torch.testing.assert_close(attend(q, k, v, mask=merged).out.double(), ref_out, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Only the first queries: what a head that reads [CLS] needs of the last block
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qkv_bias", [True, False])
def test_first_queries_equal_the_first_rows_of_full_attention(qkv_bias):
    attn = Attention(32, num_heads=4, qkv_bias=qkv_bias).eval()
    x = torch.randn(2, 7, 32)
    full = attn(x)
    for n in (1, 3, 7):
        part = attn(x, n_queries=n)
        assert part.shape == (2, n, 32)
        torch.testing.assert_close(part, full[:, :n], atol=1e-6, rtol=0)


def test_first_queries_cut_a_per_query_bias_and_keep_a_broadcast_mask():
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    bias = torch.randn(4, 7, 7)                                           # per query and key
    keys = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])[:, None, None, :]  # (B, 1, 1, Nk): per key only
    full = attn(x, mask=keys, bias=bias)
    torch.testing.assert_close(attn(x, mask=keys, bias=bias, n_queries=2), full[:, :2], atol=1e-6, rtol=0)


def test_first_queries_refuse_a_causal_mask():
    with pytest.raises(ValueError, match="causal"):
        Attention(32, num_heads=4)(torch.randn(1, 5, 32), causal=True, n_queries=1)


def test_first_queries_give_the_same_gradients():
    attn = Attention(16, num_heads=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    attn(x)[:, :2].square().sum().backward()
    full = [p.grad.clone() for p in (x, *attn.parameters())]
    x.grad = None
    attn.zero_grad()
    attn(x, n_queries=2).square().sum().backward()
    for a, b in zip(full, (x, *attn.parameters())):
        torch.testing.assert_close(b.grad, a, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# A query with no key to attend to: one answer on both paths (zero weights, zero output).
# ---------------------------------------------------------------------------------------------
def _dead_row_cases():
    keep = torch.ones(2, 1, 5, 3, dtype=torch.bool)
    keep[0, :, 1] = False           # sample 0, query 1: every key masked
    keep[1] = False                 # sample 1: all padding
    keep[1, :, :, 0] = True
    keep[1, :, 3] = False           # ... but query 3 sees nothing
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    bias = torch.randn(2, 5, 3)
    return {"bool": dict(mask=keep), "-inf float": dict(mask=additive), "bias + bool": dict(mask=keep, bias=bias),
            "bias + -inf float": dict(mask=additive, bias=bias), "causal Nq > Nk": dict(causal=True)}, keep


@pytest.mark.parametrize("case", ["bool", "-inf float", "bias + bool", "bias + -inf float", "causal Nq > Nk"])
def test_fully_masked_rows_give_zero_on_both_paths_with_finite_gradients(case):
    torch.manual_seed(11)
    cases, keep = _dead_row_cases()
    kwargs = cases[case]
    dead = ~allowed_by_causal(5, 3).any(-1) if case.startswith("causal") else ~keep.any(-1)  # (…, Nq)
    dead = dead.expand(2, 2, 5)
    assert dead.any() and not dead.all()
    results = []
    for need_weights in (False, True):
        torch.manual_seed(12)
        q, k, v = (torch.randn(2, 2, n, 4).requires_grad_() for n in (5, 3, 3))
        out, weights = attend(q, k, v, need_weights=need_weights, **kwargs)
        out.square().sum().backward()
        grads = [t.grad for t in (q, k, v)]
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        assert (out[dead] == 0).all()
        if weights is not None:
            assert torch.isfinite(weights).all() and (weights[dead] == 0).all()
            torch.testing.assert_close(weights[~dead].sum(-1), torch.ones(int((~dead).sum())))
        results.append((out, *grads))
    for fused, explicit in zip(*results):  # output, then the gradients of q, k, v
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_an_attached_recorder_does_not_change_outputs_on_all_padding():
    """Attaching an explainer (the explicit path) must not change a model's outputs, padding or not."""
    torch.manual_seed(13)
    attn = Attention(16, num_heads=2).eval()
    x = torch.randn(3, 6, 16)
    mask = padding_mask(torch.tensor([6, 2, 0]), 6)  # the third sequence is all padding
    fused = attn(x, mask=mask)
    attn.recorder, attn.name = AttentionRecorder(), "attn"
    recorded = attn(x, mask=mask)
    torch.testing.assert_close(recorded, fused, atol=1e-6, rtol=0)
    assert torch.isfinite(recorded).all()
    (w,) = attn.recorder.maps["attn"]
    assert (w[2] == 0).all() and torch.isfinite(w).all()
