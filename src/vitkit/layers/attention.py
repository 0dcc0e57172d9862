"""Scaled dot-product attention: one function for every model, and the modules built on it.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + bias, masked) V

Masks follow one convention everywhere: a boolean mask is True where a query MAY attend to a
key; a float mask is added to the scores (use -inf to forbid). Masks and biases broadcast to
the score shape (B, H, Nq, Nk).

`attend` takes PyTorch's fused kernel (`F.scaled_dot_product_attention`) unless the caller asks
for the weights, in which case it runs the explicit path and returns them too. The explainers
ask only for the layers they look at; every other layer stays fused.

A query that may attend to no key at all (every key masked: causal attention with more queries
than keys, a sequence that is all padding) gets all-zero weights and a zero output, on both
paths and on every backend, with finite gradients. (softmax over only -inf is NaN; PyTorch's
CPU kernel returns 0 there, so the explicit path and attached explainers used to disagree with
the fused one.)
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionResult(NamedTuple):
    out: Tensor               # (B, H, Nq, Dv)
    weights: Tensor | None    # (B, H, Nq, Nk) post-softmax, or None on the fused path


def causal_mask(n_q: int, n_k: int | None = None, device=None) -> Tensor:
    """Boolean (Nq, Nk) mask, True on and below the diagonal: query i sees keys 0..i.

    When Nk > Nq the queries are taken to be the last Nq positions (as in cached decoding).
    """
    n_k = n_q if n_k is None else n_k
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_k - n_q)


def padding_mask(lengths: Tensor, n_k: int) -> Tensor:
    """Boolean (B, 1, 1, Nk) mask that is True for the first `lengths[b]` keys of sample b."""
    keep = torch.arange(n_k, device=lengths.device)[None, :] < lengths[:, None]  # (B, Nk)
    return keep[:, None, None, :]


def merge_masks(mask: Tensor | None, other: Tensor | None) -> Tensor | None:
    """Combine two masks of either kind into one (boolean AND, or added scores)."""
    if mask is None or other is None:
        return other if mask is None else mask
    if mask.dtype == torch.bool and other.dtype == torch.bool:
        return mask & other
    return _as_additive(mask) + _as_additive(other)


def _as_additive(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _no_key(mask: Tensor) -> Tensor:
    """(..., Nq, 1): True for the query rows of `mask` that allow no key."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return (mask == float("-inf")).all(dim=-1, keepdim=True)


def _first_queries(t: Tensor | None, n: int) -> Tensor | None:
    """A mask or bias (..., Nq, Nk) cut to its first n query rows (one that broadcasts over queries is kept)."""
    return t if t is None or t.dim() < 2 or t.shape[-2] == 1 else t[..., :n, :]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
    logits_hook: Callable[[Tensor], Tensor] | None = None,
    weights_hook: Callable[[Tensor], Tensor] | None = None,
) -> AttentionResult:
    """Scaled dot-product attention.

    q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv).
    mask: boolean (True = may attend) or additive, broadcastable to (B, H, Nq, Nk).
    bias: additive scores, e.g. a relative position bias (H, Nq, Nk).
    causal: forbid keys after the query (aligned to the end when Nk > Nq).
    scale: defaults to 1/√D.
    need_weights: run the explicit path and return the post-softmax weights.
    logits_hook / weights_hook: transform the scores before / the weights after the softmax
        (talking-heads attention mixes heads there). Either one forces the explicit path.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if causal and q.shape[-2] > 1:  # one query aligned to the end (a cached decoding step) may see every key
        mask = merge_masks(mask, causal_mask(q.shape[-2], k.shape[-2], device=q.device))
    mask = merge_masks(mask, bias)

    explicit = need_weights or logits_hook is not None or weights_hook is not None
    if not explicit:
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        if mask is not None:
            out = out.masked_fill(_no_key(mask), 0.0)  # whatever the backend returned for such rows
        return AttentionResult(out, None)

    scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    return attend_scores(scores, v, mask=mask, dropout_p=dropout_p, logits_hook=logits_hook,
                         weights_hook=weights_hook)


def attend_scores(scores: Tensor, v: Tensor, *, mask: Tensor | None = None, dropout_p: float = 0.0,
                  logits_hook: Callable[[Tensor], Tensor] | None = None,
                  weights_hook: Callable[[Tensor], Tensor] | None = None) -> AttentionResult:
    """The second half of attention, for scores computed any way: masked softmax, then the weighted sum of v.

    scores: (..., Nq, Nk); v: (..., Nk, Dv); mask as attend takes it. attend's explicit path ends here, and so
    does additive (Bahdanau) attention, whose scores are vᵀ tanh(W·s + U·h) rather than a dot product: one
    masking rule, one softmax, one answer for a query with no key (zero weights), whatever scored it."""
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)  # as the fused path: a merged mask is float32
    if logits_hook is not None:
        scores = logits_hook(scores)
    dead = (scores == float("-inf")).all(dim=-1, keepdim=True)  # (..., Nq, 1): no key allowed
    weights = scores.masked_fill(dead, 0.0).softmax(dim=-1).masked_fill(dead, 0.0)
    if weights_hook is not None:
        weights = weights_hook(weights)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return AttentionResult(dropped @ v, weights)


class AttentionRecorder:
    """Collects attention weights from the modules it is attached to.

    Attach with `module.recorder = recorder`; detach with `module.recorder = None`. A module with
    a recorder takes the explicit path and hands its weights (B, H, Nq, Nk) to `record`.
    `heads` keeps only those heads, so a recorder holds no more than it is asked for.
    """

    def __init__(self, heads: list[int] | None = None):
        self.heads = heads
        self.maps: dict[str, list[Tensor]] = {}

    def record(self, name: str, weights: Tensor) -> None:
        weights = weights.detach()
        if self.heads is not None:
            weights = weights[:, self.heads]
        self.maps.setdefault(name, []).append(weights)


class KVCache:
    """One attention layer's keys and values, (B, H, N, hd) each, kept between decoding steps.

    Self-attention appends to buffers that double when full, so a step writes its own positions instead of
    copying all of them again (as a concatenation would); `k` and `v` are views of the filled part."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.unmasked = False  # cross-attention: its mask allows every key on every row, so later steps skip it
        self._buffers: tuple[Tensor, Tensor] | None = None  # (B, H, capacity, hd) each, for `append`

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys and values; returns all of them."""
        n, t = len(self), k.shape[-2]
        if self._buffers is None or n + t > self._buffers[0].shape[-2]:
            capacity = max(16, 2 * (n + t))
            grown = tuple(x.new_empty(*x.shape[:-2], capacity, x.shape[-1]) for x in (k, v))
            if n:
                grown[0][..., :n, :], grown[1][..., :n, :] = self.k, self.v
            self._buffers = grown
        bk, bv = self._buffers
        bk[..., n:n + t, :], bv[..., n:n + t, :] = k, v
        self.k, self.v = bk[..., :n + t, :], bv[..., :n + t, :]
        return self.k, self.v

    def select(self, index: Tensor) -> None:
        """Keep the batch rows `index` (in that order): beam search reorders its hypotheses so."""
        if self._buffers is not None:
            n = len(self)
            self._buffers = tuple(b.index_select(0, index) for b in self._buffers)
            self.k, self.v = self._buffers[0][..., :n, :], self._buffers[1][..., :n, :]
        elif self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class AttentionBase(nn.Module):
    """Shared projection-out and recording logic of every attention module in every model."""

    recorder: AttentionRecorder | None = None
    name: str = ""  # set by the recorder helpers to the module's path in the model

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; pick a head count that divides it")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask, bias, causal) -> Tensor:
        """q, k, v: (B, H, N, hd) → (B, Nq, D) after the output projection."""
        res = attend(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
            need_weights=self.recorder is not None,
        )
        if self.recorder is not None:
            self.recorder.record(self.name, res.weights)
        x = res.out.transpose(1, 2).flatten(2)  # (B, Nq, H·hd)
        return self.proj_drop(self.proj(x))


class Attention(AttentionBase):
    """Multi-head self-attention with one fused qkv projection (state-dict keys as timm's)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                causal: bool = False, n_queries: int | None = None, cache: KVCache | None = None) -> Tensor:
        """x: (B, N, D) → (B, N, D), or (B, n_queries, D) for only the first n_queries tokens' outputs (each
        still attends to all N keys: what a head that reads only the [CLS] token needs of the last block).

        cache: incremental decoding. x holds only the new tokens; their keys and values are appended to the
        cache's, and they attend to all of them (causal aligns them to the end)."""
        B, N, _ = x.shape
        if n_queries is None:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
            if cache is not None:
                k, v = cache.append(k, v)
            return self._attend(q, k, v, mask, bias, causal)
        if causal:
            raise ValueError("n_queries takes the first tokens as queries; a causal mask needs all of them")
        D = self.num_heads * self.head_dim
        if isinstance(self.qkv, nn.Linear):  # project only the queries that are asked for
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :n_queries], w[:D], None if b is None else b[:D])
            kv = F.linear(x, w[D:], None if b is None else b[D:])
        else:  # a quantised qkv (vitkit.quantize) has no weight to split: project all, keep what is needed
            qkv = self.qkv(x)  # (B, N, 3·D)
            q, kv = qkv[:, :n_queries, :D], qkv[..., D:]
        q = q.reshape(B, n_queries, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)
        k, v = kv.reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        mask, bias = (_first_queries(t, n_queries) for t in (mask, bias))
        return self._attend(q, k, v, mask, bias, causal)


class CrossAttention(AttentionBase):
    """Multi-head attention whose queries come from x and keys/values from a context."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, context_dim: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, dim * 2, bias=qkv_bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                causal: bool = False, cache: KVCache | None = None) -> Tensor:
        """x: (B, Nq, D), context: (B, Nk, Dc) → (B, Nq, D).

        cache: the context's keys and values are computed on the first call and reused after (decoding: the
        context, an encoder's output, does not change between steps)."""
        B, Nq, _ = x.shape
        q = self.q(x).reshape(B, Nq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Nq, hd)
        if cache is not None and cache.k is not None:
            k, v = cache.k, cache.v
            mask = None if cache.unmasked else mask  # (a selection of rows keeps an all-True mask all True)
        else:
            Nk = context.shape[1]
            kv = self.kv(context).reshape(B, Nk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)  # each (B, H, Nk, hd)
            if cache is not None:
                cache.k, cache.v = k, v
                cache.unmasked = mask is None or (mask.dtype == torch.bool and bool(mask.all()))
        return self._attend(q, k, v, mask, bias, causal)


@contextmanager
def record_attention(model: nn.Module, layers: Iterable[str] | None = None,
                     heads: list[int] | None = None) -> Iterator[AttentionRecorder]:
    """Record the attention weights of the named attention modules (all of them when `layers` is None)
    while the block runs; only those take the explicit path, every other one stays fused.

        with record_attention(model, ["blocks.11.attn"]) as rec:
            model(x)
        rec.maps["blocks.11.attn"][0]   # (B, H, N, N)
    """
    modules = {name: m for name, m in model.named_modules() if isinstance(m, AttentionBase)}
    if layers is None:
        chosen = modules
    else:
        layers = list(layers)
        unknown = [n for n in layers if n not in modules]
        if unknown:
            listed = ", ".join(list(modules)[:6]) + (" …" if len(modules) > 6 else "")
            raise KeyError(f"no attention module named {', '.join(unknown)}; this model's are: {listed or 'none'}")
        chosen = {n: modules[n] for n in layers}
    recorder = AttentionRecorder(heads)
    for name, module in chosen.items():
        module.recorder, module.name = recorder, name
    try:
        yield recorder
    finally:
        for module in chosen.values():
            module.recorder = None
