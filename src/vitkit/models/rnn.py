"""The RNN encoder–decoder with additive attention (Bahdanau, Cho and Bengio, 2015): attention as it was born.

    source ids → embedding → bidirectional GRU → annotations h_1 … h_S (B, S, 2H)         (the memory)
    decoder, step i: e_ij = vᵀ tanh(W·s_{i-1} + U·h_j)        additive score of each annotation
                     α_i = softmax_j(e_ij) over the real source positions
                     c_i = Σ_j α_ij h_j                        the context
                     s_i = GRU([embed(y_{i-1}); c_i], s_{i-1})
                     logits_i = generator(tanh(L·[s_i; c_i; embed(y_{i-1})]))
    s_0 = tanh(W_s · mean of the annotations)

The masked softmax and weighted sum are attention's own (layers/attention.attend_scores, which every
dot-product attention in vitkit ends in too); only the score differs. The model has the seams vitkit.generate
decodes through (encode, decode with a cache, generator), so greedy and beam search work on it as on the
Transformer, and `align(src, tgt)` returns the alignment matrix α (B, T, S) the paper draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..layers import attend_scores
from ..registry import ModelEntry, register
from .transformer import Memory


@dataclass(frozen=True)
class BahdanauConfig:
    src_vocab: int = 11             # source token ids (pad_id marks padding)
    tgt_vocab: int = 11             # target ids and the generator's outputs
    embed_dim: int = 64             # token embedding width, source and target
    hidden: int = 128               # H: each GRU direction's state; annotations are 2H wide
    attn_dim: int = 128             # width of the additive score's hidden layer (W·s + U·h)
    dropout: float = 0.1            # on embeddings and the pre-generator layer
    max_len: int = 256              # kept for the objectives' sake: a GRU has no position limit
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class AdditiveAttention(nn.Module):
    """score(s, h) = vᵀ tanh(W·s + U·h); then attention's masked softmax and weighted sum."""

    def __init__(self, query_dim: int, key_dim: int, hidden: int):
        super().__init__()
        self.W = nn.Linear(query_dim, hidden, bias=False)
        self.U = nn.Linear(key_dim, hidden, bias=True)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None, projected: Tensor | None = None):
        """query (B, Dq), keys (B, S, Dk), mask (B, 1, 1, S) bool → (context (B, Dk), weights (B, S)).
        projected: U·keys, when the caller keeps it between steps."""
        uh = self.U(keys) if projected is None else projected                     # (B, S, A)
        scores = self.v(torch.tanh(self.W(query)[:, None] + uh)).squeeze(-1)     # (B, S)
        res = attend_scores(scores[:, None, :], keys, mask=None if mask is None else mask[:, 0])  # (B, 1, ·)
        return res.out[:, 0], res.weights[:, 0]


class RNNState:
    """The decoder's cache: its state s (and an LSTM's cell c), U·h, and the attention weights of each step."""

    def __init__(self):
        self.s: Tensor | None = None
        self.c: Tensor | None = None
        self.projected: Tensor | None = None
        self.weights: list[Tensor] = []

    def __len__(self) -> int:
        return len(self.weights)

    def select(self, index: Tensor) -> None:
        if self.s is not None:
            self.s, self.projected = self.s.index_select(0, index), self.projected.index_select(0, index)
            self.c = None if self.c is None else self.c.index_select(0, index)
            self.weights = [w.index_select(0, index) for w in self.weights]


class AttentionDecoder(nn.Module):
    """An RNN decoder with additive attention over a memory: Bahdanau's (GRU) and Show, Attend and Tell's
    (LSTM, with its gate β = σ(f_β(s)) on the context). Step i:

        c_i = β · Σ_j α_ij m_j,  α_i = softmax_j(vᵀ tanh(W·s_{i-1} + U·m_j))
        s_i = cell([embed(y_{i-1}); c_i], s_{i-1})
        out_i = tanh(L·[s_i; c_i; embed(y_{i-1})])      → generator → logits
    s_0 (and an LSTM's c_0) = tanh(linear(mean of the real memory positions)).
    """

    def __init__(self, vocab: int, embed_dim: int, hidden: int, memory_dim: int, attn_dim: int, dropout: float,
                 pad_id: int, cell: str = "gru", gate: bool = False):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=pad_id)
        self.init_state = nn.Linear(memory_dim, hidden * (2 if cell == "lstm" else 1))
        self.attention = AdditiveAttention(hidden, memory_dim, attn_dim)
        self.gate = nn.Linear(hidden, 1) if gate else None
        self.cell = (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(embed_dim + memory_dim, hidden)
        self.pre_output = nn.Linear(hidden + memory_dim + embed_dim, hidden)
        self.generator = nn.Linear(hidden, vocab)
        self.drop = nn.Dropout(dropout)

    def start(self, memory: Memory, state: RNNState) -> None:
        real = memory.mask[:, 0, 0, :, None].float()                                   # (B, S, 1)
        mean = (memory.states * real).sum(1) / real.sum(1).clamp(min=1)
        init = torch.tanh(self.init_state(mean))
        state.s, state.c = (init.chunk(2, dim=-1) if isinstance(self.cell, nn.LSTMCell) else (init, None))
        state.projected = self.attention.U(memory.states)

    def forward(self, tgt: Tensor, memory: Memory, state: RNNState) -> Tensor:
        """Target ids (B, T) → the generator's inputs (B, T, hidden); `state` carries on from its last call."""
        if state.s is None:
            self.start(memory, state)
        outputs = []
        for t in range(tgt.shape[1]):
            emb = self.drop(self.embed(tgt[:, t]))                                   # (B, E)
            context, weights = self.attention(state.s, memory.states, memory.mask, state.projected)
            if self.gate is not None:
                context = torch.sigmoid(self.gate(state.s)) * context
            x = torch.cat([emb, context], dim=-1)
            if state.c is None:
                state.s = self.cell(x, state.s)
            else:
                state.s, state.c = self.cell(x, (state.s, state.c))
            state.weights.append(weights)
            outputs.append(torch.tanh(self.pre_output(torch.cat([state.s, context, emb], dim=-1))))
        return self.drop(torch.stack(outputs, dim=1))


class AttentionRNNBase(nn.Module):
    """The seams vitkit.generate decodes through, for a model with an `AttentionDecoder` named `decoder` and an
    `encode(inputs) → Memory` of its own."""

    decoder: AttentionDecoder

    def new_cache(self) -> RNNState:
        return RNNState()

    def decode(self, tgt: Tensor, memory: Memory, cache: RNNState | None = None) -> Tensor:
        """Target ids (B, T) → the generator's inputs (B, T, H). With a cache, tgt holds only the new tokens and
        the state carries on from the last call; the attention weights of each step are appended to it."""
        return self.decoder(tgt, memory, cache if cache is not None else RNNState())

    def generator(self, hidden: Tensor) -> Tensor:
        return self.decoder.generator(hidden)

    def forward(self, inputs: Tensor, tgt: Tensor) -> Tensor:
        """inputs, target ids (B, T) (BOS + the sequence) → logits (B, T, vocab)."""
        return self.generator(self.decode(tgt, self.encode(inputs)))

    @torch.no_grad()
    def align(self, inputs: Tensor, tgt: Tensor) -> Tensor:
        """The alignment matrix under teacher forcing: α (B, T, S), row i the weights that produced token i."""
        state = RNNState()
        self.decode(tgt, self.encode(inputs), state)
        return torch.stack(state.weights, dim=1)


class BahdanauSeq2Seq(AttentionRNNBase):
    def __init__(self, cfg: BahdanauConfig):
        super().__init__()
        self.cfg = cfg
        E, H = cfg.embed_dim, cfg.hidden
        self.src_embed = nn.Embedding(cfg.src_vocab, E, padding_idx=cfg.pad_id)
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.decoder = AttentionDecoder(cfg.tgt_vocab, E, H, 2 * H, cfg.attn_dim, cfg.dropout, cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: Tensor) -> Memory:
        """Source ids (B, S) → annotations (B, S, 2H) (zeros at padding) and the padding mask."""
        keep = src != self.cfg.pad_id
        lengths = keep.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.drop(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return Memory(states, keep[:, None, None, :])


register(ModelEntry("rnn_bahdanau", "rnn", BahdanauConfig(), BahdanauSeq2Seq, inputs="tokens",
                    tiny=dict(embed_dim=8, hidden=8, attn_dim=8)))
