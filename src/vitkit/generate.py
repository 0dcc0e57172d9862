"""Decoding an encoder–decoder: greedy and batched beam search, with or without a key/value cache.

Any model with these seams decodes here (the Transformer, the captioners):

    model.encode(inputs) → Memory          (states (B, S, d), mask (B, 1, 1, S); Memory.select(index))
    model.decode(tokens, memory, cache)    → hidden (B, T, d); with a cache, tokens are only the new ones
    model.generator(hidden)                → logits (B, T, V)
    model.new_cache()                      → a DecoderCache (select(index) reorders it)
    model.cfg.bos_id, eos_id, pad_id

Outputs are (B, L) token ids after BOS: each sequence ends with EOS (unless max_len cut it) and is padded with
pad_id after it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def greedy(model: nn.Module, inputs: Tensor, max_len: int, *, cache: bool = True) -> Tensor:
    """The most likely next token at each step, until every sequence has emitted EOS or max_len tokens."""
    cfg = model.cfg
    memory = model.encode(inputs)
    B = memory.states.shape[0]
    ys = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=memory.states.device)
    kv = model.new_cache() if cache else None
    done = torch.zeros(B, dtype=torch.bool, device=ys.device)
    for _ in range(max_len):
        hidden = model.decode(ys[:, -1:] if kv is not None else ys, memory, kv)
        nxt = model.generator(hidden[:, -1]).argmax(-1)
        nxt = nxt.masked_fill(done, cfg.pad_id)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == cfg.eos_id
        if done.all():
            break
    return ys[:, 1:]


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's (Wu et al., 2016): ((5 + length) / 6)^alpha; alpha 0 ranks by log-probability alone."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model: nn.Module, inputs: Tensor, max_len: int, *, beam: int = 4, alpha: float = 0.6,
                cache: bool = True) -> Tensor:
    """The best of `beam` hypotheses per input by log-probability / length_penalty(length, alpha), all inputs
    searched at once (B·beam rows). A finished hypothesis (EOS emitted) is kept as it is at no cost; the search
    stops when every hypothesis has finished or after max_len tokens. beam=1 is greedy decoding exactly."""
    cfg = model.cfg
    memory = model.encode(inputs)
    B = memory.states.shape[0]
    device = memory.states.device
    rows = torch.arange(B, device=device).repeat_interleave(beam)  # (B·beam,) the input of each hypothesis
    memory = memory.select(rows)
    kv = model.new_cache() if cache else None
    ys = torch.full((B * beam, 1), cfg.bos_id, dtype=torch.long, device=device)
    score = torch.zeros(B, beam, device=device)
    score[:, 1:] = float("-inf")  # every hypothesis starts as the same one: keep one copy alive
    length = torch.zeros(B * beam, device=device)
    done = torch.zeros(B * beam, dtype=torch.bool, device=device)
    for _ in range(max_len):
        hidden = model.decode(ys[:, -1:] if kv is not None else ys, memory, kv)
        logp = model.generator(hidden[:, -1]).float().log_softmax(-1)  # (B·beam, V)
        V = logp.shape[-1]
        logp[done] = float("-inf")
        logp[done, cfg.pad_id] = 0.0  # a finished hypothesis only pads, at no cost
        total = score.reshape(-1, 1) + logp  # (B·beam, V) log-probability of each extension
        new_len = length + (~done).float()
        ranked = total / length_penalty(new_len, alpha)[:, None]
        best, idx = ranked.reshape(B, beam * V).topk(beam, dim=1)  # (B, beam)
        origin = idx // V + torch.arange(B, device=device)[:, None] * beam  # the row each winner extends
        token = (idx % V).reshape(-1)
        origin = origin.reshape(-1)
        score = total.reshape(-1)[origin * V + token].reshape(B, beam)
        ys = torch.cat([ys[origin], token[:, None]], dim=1)
        length, done = new_len[origin], done[origin] | (token == cfg.eos_id)
        if kv is not None:
            kv.select(origin)
        if done.all():
            break
    final = (score.reshape(-1) / length_penalty(length, alpha)).reshape(B, beam)
    pick = final.argmax(dim=1) + torch.arange(B, device=device) * beam
    return ys[pick, 1:]
