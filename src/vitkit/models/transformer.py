"""The Transformer (Vaswani et al., 2017): an encoder–decoder over token sequences, built from vitkit's attention.

    source ids (B, S) → embedding · √d + sinusoids → dropout → N × encoder layer ──────────┐ memory (B, S, d)
    target ids (B, T) → embedding · √d + sinusoids → dropout → N × decoder layer → generator → logits (B, T, V)

    encoder layer: self-attention (source padding masked), feed-forward
    decoder layer: masked self-attention (causal), cross-attention to the memory (source padding masked),
                   feed-forward
    each sub-layer: LN(x + Dropout(f(x)))  post-LN, the paper's (default)
                    x + Dropout(f(LN(x)))  pre-LN (norm_first=True, as the Annotated Transformer), with a final
                                           LayerNorm after each stack

The attention is the one every ViT uses (layers/attention.py: Attention with its fused qkv, CrossAttention); the
feed-forward is the ViT's Mlp with ReLU. `encode`, `decode` and `generator` are the seams that decoding
(vitkit.generate: greedy and beam search) and the captioner use; `decode` takes a DecoderCache, so that each
new token costs one position's work (keys and values of the earlier ones are kept).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..layers import Attention, CrossAttention, KVCache, Mlp, sincos_1d
from ..registry import ModelEntry, register


@dataclass(frozen=True)
class TransformerConfig:
    src_vocab: int = 37000          # source token ids 0..src_vocab-1 (pad_id marks padding)
    tgt_vocab: int = 37000          # target token ids, and the generator's outputs
    d_model: int = 512              # d: token width
    num_heads: int = 8              # attention heads per layer
    d_ff: int = 2048                # feed-forward hidden width
    encoder_layers: int = 6         # N of the encoder
    decoder_layers: int = 6         # N of the decoder
    dropout: float = 0.1            # on embeddings, attention weights and every sub-layer's output
    norm_first: bool = False        # pre-LN instead of the paper's post-LN
    norm_eps: float = 1e-5          # LayerNorm epsilon (PyTorch's default, as torch.nn.Transformer)
    share_embeddings: bool = False  # one embedding table for source and target (needs one vocabulary)
    tie_generator: bool = True      # the generator's weight is the target embedding (the paper's sharing)
    max_len: int = 1024             # longest sequence the sinusoid table covers
    pad_id: int = 0                 # padding (never attended to, never a training target)
    bos_id: int = 1                 # starts every target sequence
    eos_id: int = 2                 # ends it


class Memory(NamedTuple):
    """What the decoder attends to: the encoder's output and which of its positions are real."""
    states: Tensor      # (B, S, d)
    mask: Tensor        # (B, 1, 1, S) bool, True = a real position

    def select(self, index: Tensor) -> Memory:
        """The batch rows `index` (beam search repeats each source once per hypothesis)."""
        return Memory(self.states.index_select(0, index), self.mask.index_select(0, index))


class DecoderCache:
    """Per decoder layer: the self-attention's keys and values so far, and the cross-attention's (computed once)."""

    def __init__(self, layers: int):
        self.layers = [(KVCache(), KVCache()) for _ in range(layers)]

    def __len__(self) -> int:
        return len(self.layers[0][0])  # positions decoded so far

    def select(self, index: Tensor) -> None:
        for own, cross in self.layers:
            own.select(index)
            cross.select(index)


def _sublayer(x: Tensor, norm: nn.LayerNorm, f: Callable[[Tensor], Tensor], norm_first: bool) -> Tensor:
    return x + f(norm(x)) if norm_first else norm(x + f(x))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, norm_first: bool, eps: float):
        super().__init__()
        self.norm_first = norm_first
        self.attn = Attention(d, heads, qkv_bias=True, attn_drop=dropout, proj_drop=dropout)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, d_ff, act_layer=nn.ReLU, drop=dropout)
        self.norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B, S, d), mask: (B, 1, 1, S) bool → (B, S, d)."""
        x = _sublayer(x, self.norm1, lambda h: self.attn(h, mask=mask), self.norm_first)
        return _sublayer(x, self.norm2, self.mlp, self.norm_first)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to a memory, feed-forward: the block the captioner reuses."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, norm_first: bool, eps: float,
                 context_dim: int | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.attn = Attention(d, heads, qkv_bias=True, attn_drop=dropout, proj_drop=dropout)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.cross_attn = CrossAttention(d, heads, qkv_bias=True, context_dim=context_dim, attn_drop=dropout,
                                         proj_drop=dropout)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, d_ff, act_layer=nn.ReLU, drop=dropout)
        self.norm3 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, memory: Memory, mask: Tensor | None = None,
                cache: tuple[KVCache, KVCache] | None = None) -> Tensor:
        """x: (B, T, d) (only the new positions when a cache is given), mask: target padding (B, 1, 1, T) or None
        → (B, T, d). Self-attention is causal."""
        own, cross = cache if cache is not None else (None, None)
        x = _sublayer(x, self.norm1, lambda h: self.attn(h, mask=mask, causal=True, cache=own), self.norm_first)
        x = _sublayer(x, self.norm2, lambda h: self.cross_attn(h, memory.states, mask=memory.mask, cache=cross),
                      self.norm_first)
        return _sublayer(x, self.norm3, self.mlp, self.norm_first)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.share_embeddings and cfg.src_vocab != cfg.tgt_vocab:
            raise ValueError(f"share_embeddings needs one vocabulary, but src_vocab is {cfg.src_vocab} and "
                             f"tgt_vocab {cfg.tgt_vocab}; make them equal or set share_embeddings=False")
        self.cfg = cfg
        d = self.d_model = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab, d)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab, d)
        self.register_buffer("positions", sincos_1d(cfg.max_len, d), persistent=False)  # (max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = dict(d=d, heads=cfg.num_heads, d_ff=cfg.d_ff, dropout=cfg.dropout, norm_first=cfg.norm_first,
                     eps=cfg.norm_eps)
        self.encoder = nn.ModuleList([EncoderLayer(**layer) for _ in range(cfg.encoder_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(**layer) for _ in range(cfg.decoder_layers)])
        final = (lambda: nn.LayerNorm(d, eps=cfg.norm_eps)) if cfg.norm_first else nn.Identity
        self.encoder_norm = final() if cfg.encoder_layers else nn.Identity()  # none: a captioner's decoder
        self.decoder_norm = final()
        self.generator = nn.Linear(d, cfg.tgt_vocab)
        self.init_weights()
        if cfg.tie_generator:
            self.generator.weight = self.tgt_embed.weight

    def init_weights(self) -> None:
        """Xavier-uniform on every matrix (as the Annotated Transformer), embeddings N(0, d^-1/2) so that
        embedding · √d has unit scale, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=self.d_model ** -0.5)

    def embed(self, table: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, T) → (B, T, d): embedding · √d plus the sinusoids of positions offset..offset+T-1."""
        T = ids.shape[1]
        if offset + T > self.cfg.max_len:
            raise ValueError(f"a sequence of {offset + T} tokens is longer than max_len {self.cfg.max_len}; "
                             f"build the model with max_len={offset + T} or more")
        return self.drop(table(ids) * math.sqrt(self.d_model) + self.positions[offset:offset + T])

    def padding(self, ids: Tensor) -> Tensor:
        """(B, T) ids → (B, 1, 1, T) bool, True where the token is not padding."""
        return (ids != self.cfg.pad_id)[:, None, None, :]

    # ---- the seams ------------------------------------------------------------------------------------------
    def encode_embedded(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The encoder stack on embedded tokens x (B, S, d) → memory states (B, S, d)."""
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def decode_embedded(self, y: Tensor, memory: Memory, mask: Tensor | None = None,
                        cache: DecoderCache | None = None) -> Tensor:
        """The decoder stack on embedded targets y (B, T, d) → hidden states (B, T, d)."""
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, mask, None if cache is None else cache.layers[i])
        return self.decoder_norm(y)

    def encode(self, src: Tensor) -> Memory:
        """Source ids (B, S) → the memory the decoder attends to."""
        mask = self.padding(src)
        return Memory(self.encode_embedded(self.embed(self.src_embed, src), mask), mask)

    def decode(self, tgt: Tensor, memory: Memory, cache: DecoderCache | None = None) -> Tensor:
        """Target ids (B, T) → hidden states (B, T, d). With a cache, tgt holds only the tokens after the ones
        already decoded, and their positions continue from there."""
        offset = 0 if cache is None else len(cache)
        mask = self.padding(tgt) if cache is None else None  # decoding feeds no padding
        return self.decode_embedded(self.embed(self.tgt_embed, tgt, offset), memory, mask, cache)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.decoder))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Source ids (B, S), target ids (B, T) (teacher forcing: BOS + the sequence) → logits (B, T, tgt_vocab)."""
        return self.generator(self.decode(tgt, self.encode(src)))

    @torch.no_grad()
    def align(self, src: Tensor, tgt: Tensor) -> Tensor:
        """The last decoder layer's cross-attention under teacher forcing, averaged over heads: (B, T, S)."""
        from ..layers import record_attention
        name = f"decoder.{len(self.decoder) - 1}.cross_attn"
        with record_attention(self, [name]) as rec:
            self(src, tgt)
        return rec.maps[name][0].mean(dim=1)


# ---- variants ---------------------------------------------------------------------------------------------------
# base: the paper's (Table 3: d 512, 8 heads, d_ff 2048, N = 6, dropout 0.1, one shared 37,000-token BPE
# vocabulary). small: the size the copy and reversal tasks train on a CPU in minutes (a vocabulary of 11 as the
# Annotated Transformer's copy task: pad, bos, eos and 8 symbols).
TRANSFORMER_TINY = dict(d_model=16, num_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, src_vocab=11,
                        tgt_vocab=11, max_len=32)
register(ModelEntry("transformer_base", "transformer", TransformerConfig(share_embeddings=True), Transformer,
                    inputs="tokens", tiny=TRANSFORMER_TINY))
register(ModelEntry("transformer_small", "transformer",
                    TransformerConfig(src_vocab=11, tgt_vocab=11, d_model=128, num_heads=4, d_ff=512,
                                      encoder_layers=2, decoder_layers=2, share_embeddings=True, max_len=256),
                    Transformer, inputs="tokens", tiny=TRANSFORMER_TINY))
