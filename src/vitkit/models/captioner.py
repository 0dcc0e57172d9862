"""Image captioning with visual attention: the decoder looks at a different part of the image for each word.

    Captioner       any registered image model (a ViT, a CNN; optionally from --init) → its tokens, or its
                    feature map's positions with 2-D sin-cos embeddings, projected to d → the Transformer's
                    decoder (models/transformer.py) cross-attends to them
    ShowAttendTell  Xu et al., 2015: a CNN's feature map (a small one's 7×28 positions of 64 channels, or a
                    registered CNN's, optionally from --init) → an LSTM with
                    additive attention and its gate β (models/rnn.AttentionDecoder); the doubly stochastic
                    regulariser λ · (1 - Σ_t α_t)², averaged over positions, asks every position to be looked at

Both have the seams vitkit.generate decodes through (encode, decode with a cache, generator, new_cache), so greedy
and beam search caption with either; `align(images, tgt)` gives the attention of each target token over the
memory positions (B, T, N), `place_grid()` how those positions lie on the image, and `token_x()` the horizontal
centre, in pixels, of each memory position (NaN for a [CLS]-like token), which is what "the attention lands on
the digit being written" is measured with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import record_attention, sincos_2d
from ..registry import ModelEntry, create_model, register
from .rnn import AttentionDecoder, AttentionRNNBase, RNNState
from .transformer import Memory, Transformer, TransformerConfig


@dataclass(frozen=True)
class CaptionerConfig:
    encoder: str = "vit_pico_patch4_28"   # a registered image model; built with no head at img_size, in_chans
    encoder_depth: int | None = None      # fewer blocks for the encoder (None: the model's own)
    img_size: tuple[int, int] = (28, 112)  # (H, W): four 28-pixel digits side by side
    in_chans: int = 1
    vocab: int = 13                       # token ids (the digit strips': pad, bos, eos, '0' … '9')
    d_model: int = 128                    # decoder width
    num_heads: int = 4
    d_ff: int = 512
    decoder_layers: int = 2
    dropout: float = 0.1
    norm_first: bool = False              # the decoder's LayerNorm placement (post-LN as the paper)
    max_len: int = 64                     # longest caption the decoder's sinusoids cover
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


def _image_encoder(cfg) -> nn.Module:
    extra = {"depth": cfg.encoder_depth} if getattr(cfg, "encoder_depth", None) else {}
    H, W = cfg.img_size
    return create_model(cfg.encoder, num_classes=0, img_size=(H, W), in_chans=cfg.in_chans, **extra)


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _image_encoder(cfg)
        self.proj = nn.Linear(self.encoder.num_features, cfg.d_model)
        self.text = Transformer(TransformerConfig(
            src_vocab=cfg.vocab, tgt_vocab=cfg.vocab, d_model=cfg.d_model, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
            encoder_layers=0, decoder_layers=cfg.decoder_layers, dropout=cfg.dropout, norm_first=cfg.norm_first,
            share_embeddings=True, max_len=cfg.max_len, pad_id=cfg.pad_id, bos_id=cfg.bos_id, eos_id=cfg.eos_id))

    def features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) → the encoder's tokens (B, N, width): a ViT's (prefix tokens first), or a feature map's
        positions in row-major order with fixed 2-D sin-cos position embeddings added."""
        f = self.encoder.forward_features(images)
        if f.ndim == 4:  # (B, C, h, w): a CNN
            B, C, h, w = f.shape
            f = f.flatten(2).transpose(1, 2) + sincos_2d(h, w, C).to(f)
        return f

    def encode(self, images: Tensor) -> Memory:
        states = self.proj(self.features(images))
        mask = torch.ones(states.shape[0], 1, 1, states.shape[1], dtype=torch.bool, device=states.device)
        return Memory(states, mask)

    def decode(self, tgt: Tensor, memory: Memory, cache=None) -> Tensor:
        return self.text.decode(tgt, memory, cache)

    def generator(self, hidden: Tensor) -> Tensor:
        return self.text.generator(hidden)

    def new_cache(self):
        return self.text.new_cache()

    def forward(self, images: Tensor, tgt: Tensor) -> Tensor:
        """images (B, C, H, W), target ids (B, T) (BOS + the caption) → logits (B, T, vocab)."""
        return self.generator(self.decode(tgt, self.encode(images)))

    @torch.no_grad()
    def align(self, images: Tensor, tgt: Tensor) -> Tensor:
        """The last decoder layer's cross-attention under teacher forcing, averaged over heads: (B, T, N)."""
        name = f"text.decoder.{len(self.text.decoder) - 1}.cross_attn"
        with record_attention(self, [name]) as rec:
            self(images, tgt)
        return rec.maps[name][0].mean(dim=1)

    def place_grid(self) -> tuple[int, int, int]:
        """(prefix, Gh, Gw): the memory holds `prefix` tokens that are not places (a ViT's [CLS]), then a Gh×Gw grid
        of places in row-major order (a ViT's patches, or a CNN's feature map)."""
        enc = self.encoder
        if hasattr(enc, "patch_embed"):
            return enc.num_prefix_tokens, *enc.patch_embed.grid_size
        return 0, *_map_grid(enc.forward_features, self.cfg)

    def token_x(self) -> Tensor:
        """(N,) the horizontal centre in pixels of each memory position; NaN for tokens that are not a place."""
        return _token_x(*self.place_grid(), self.cfg.img_size[1])


def _map_grid(features, cfg) -> tuple[int, int]:
    """(h, w) of the feature map `features` makes of an image of cfg.img_size: a dry run, as a CNN's output size
    depends on its strides and paddings."""
    with torch.no_grad():
        return tuple(features(torch.zeros(1, cfg.in_chans, *cfg.img_size)).shape[-2:])


def _token_x(prefix: int, gh: int, gw: int, width: int) -> Tensor:
    cols = (torch.arange(gh * gw) % gw + 0.5) * (width / gw)
    return torch.cat([torch.full((prefix,), float("nan")), cols])


# ---- Show, Attend and Tell ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShowAttendTellConfig:
    img_size: tuple[int, int] = (28, 112)
    in_chans: int = 1
    vocab: int = 13
    encoder: str | None = None  # a registered CNN for the features (its feature map; optionally from --init), or
                                # None: the small CNN below (two conv-conv-pool stages, 32 then `channels` wide)
    channels: int = 64          # the small CNN's feature width
    embed_dim: int = 64
    hidden: int = 256           # the LSTM's state
    attn_dim: int = 128
    dropout: float = 0.2
    alpha_c: float = 1.0        # λ of the doubly stochastic attention regulariser (0: off)
    max_len: int = 64           # (a caption limit for the objectives; an LSTM has none)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShowAttendTell(AttentionRNNBase):
    def __init__(self, cfg: ShowAttendTellConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.encoder:
            self.encoder = _image_encoder(cfg)
            C = self.encoder.num_features
        else:
            C = cfg.channels
            self.encoder = nn.Sequential(_conv(cfg.in_chans, 32), _conv(32, 32), nn.MaxPool2d(2),
                                         _conv(32, C), _conv(C, C), nn.MaxPool2d(2))  # stride 4
        self.decoder = AttentionDecoder(cfg.vocab, cfg.embed_dim, cfg.hidden, C, cfg.attn_dim, cfg.dropout,
                                        cfg.pad_id, cell="lstm", gate=True)
        self.penalty: Tensor | None = None  # the regulariser of the last teacher-forced forward

    def features(self, images: Tensor) -> Tensor:
        """(B, C_in, H, W) → the CNN's feature map (B, C, h, w)."""
        return self.encoder.forward_features(images) if self.cfg.encoder else self.encoder(images)

    def encode(self, images: Tensor) -> Memory:
        f = self.features(images)                             # (B, C, h, w)
        states = f.flatten(2).transpose(1, 2)                 # (B, h·w, C)
        mask = torch.ones(states.shape[0], 1, 1, states.shape[1], dtype=torch.bool, device=states.device)
        return Memory(states, mask)

    def forward(self, images: Tensor, tgt: Tensor) -> Tensor:
        """As AttentionRNNBase.forward; also sets `penalty`, λ · (1 - Σ_t α_t)² averaged over images and positions,
        Σ_t over the real (non-padding) target steps, which the caption objective adds to its loss. The paper
        sums over the positions; with 196 positions and a few words that sum is about 190 whatever the
        attention does and swamps the caption loss, so it is averaged, as the common PyTorch implementation of
        Show, Attend and Tell does (λ · 196 recovers the paper's)."""
        state = RNNState()
        logits = self.generator(self.decode(tgt, self.encode(images), state))
        alphas = torch.stack(state.weights, dim=1)            # (B, T, N)
        real = (tgt != self.cfg.pad_id)[..., None].float()
        self.penalty = self.cfg.alpha_c * ((1 - (alphas * real).sum(1)) ** 2).mean()
        return logits

    def place_grid(self) -> tuple[int, int, int]:
        """(0, h, w): every memory position is a place of the feature map."""
        return 0, *_map_grid(self.features, self.cfg)

    def token_x(self) -> Tensor:
        return _token_x(*self.place_grid(), self.cfg.img_size[1])


register(ModelEntry("caption_vit_pico_patch4", "captioner", CaptionerConfig(), Captioner, mean=(0.5,), std=(0.5,),
                    inputs="image+tokens", tags=("mnist",),
                    tiny=dict(encoder_depth=1, d_model=16, num_heads=2, d_ff=32, decoder_layers=1)))
register(ModelEntry("caption_resnet_pico", "captioner", CaptionerConfig(encoder="resnet_pico_28"), Captioner,
                    mean=(0.5,), std=(0.5,), inputs="image+tokens", tags=("mnist",),
                    tiny=dict(d_model=16, num_heads=2, d_ff=32, decoder_layers=1)))
register(ModelEntry("caption_show_attend_tell", "captioner", ShowAttendTellConfig(), ShowAttendTell, mean=(0.5,),
                    std=(0.5,), inputs="image+tokens", tags=("mnist",),
                    tiny=dict(channels=8, embed_dim=8, hidden=16, attn_dim=8)))
