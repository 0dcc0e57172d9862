"""MAE: masked autoencoders (He et al., 2021), as facebookresearch/mae builds them.

    images ─ patches ─ keep a random 25% ─ ViT encoder ─ decoder_embed ─┐
                                                                         ├ unshuffle, + mask tokens for the 75%
                                 decoder blocks ─ decoder_norm ─ pred ◄──┘   + fixed 2-D sin-cos positions
    loss = mean over the *removed* patches of the per-patch MSE against the pixels
           (norm_pix_loss: each target patch normalised by its own mean and variance)

The encoder is a plain VisionTransformer (`encoder`, fixed sin-cos positions, no head): its weights are
those of the ViT it was built from, so `vitkit train --init` fine-tunes an MAE run like any ViT checkpoint.
The decoder is narrower and shallower (its own width, depth and heads) and is thrown away after
pretraining. Masking is per sample: argsort of uniform noise, drawn from a generator or passed in
(`noise`), so a run is deterministic when asked (transformers' ViTMAE takes the same `noise`).

Tensor names follow facebookresearch/mae (decoder_embed, mask_token, decoder_pos_embed, decoder_blocks,
decoder_norm, decoder_pred), with the encoder under `encoder.` in timm's ViT keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import Block, sincos_2d
from ..registry import ModelEntry, register
from .vit import VisionTransformer, ViTConfig, vit_config


@dataclass(frozen=True)
class MAEConfig(ViTConfig):
    num_classes: int = 0                    # the encoder has no head
    pos_embed: str = "sincos"               # fixed 2-D sin-cos, as MAE pretrains
    decoder_embed_dim: int = 512            # decoder width
    decoder_depth: int = 8                  # decoder blocks
    decoder_num_heads: int = 16             # decoder attention heads
    decoder_mlp_ratio: float = 4.0          # decoder MLP hidden width = ratio · decoder width
    mask_ratio: float = 0.75                # share of the patches removed from each image
    norm_pix_loss: bool = False             # targets: each patch normalised by its own mean and variance


class MAEOutput(NamedTuple):
    loss: Tensor        # () mean squared error over the removed patches
    pred: Tensor        # (B, N, P·P·C) the reconstruction of every patch, in patchify's layout
    mask: Tensor        # (B, N) 1 where the patch was removed, 0 where the encoder saw it


class Masking(NamedTuple):
    keep: Tensor        # (B, K) indices of the kept patches, in the encoder's order
    mask: Tensor        # (B, N) 1 = removed
    restore: Tensor     # (B, N) the permutation that puts [kept, removed] back in patch order


def random_masking(noise: Tensor, mask_ratio: float) -> Masking:
    """Per-sample random masking from noise (B, N): the patches with the smallest noise are kept, and
    int(N · (1 - mask_ratio)) of them."""
    B, N = noise.shape
    n_keep = int(N * (1 - mask_ratio))
    if n_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no patch of {N}; use a ratio below {1 - 1 / N:.3f}")
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(B, N, device=noise.device)
    mask[:, :n_keep] = 0
    return Masking(shuffle[:, :n_keep], torch.gather(mask, 1, restore), restore)


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) → (B, N, P·P·C), each patch's pixels in (row, column, channel) order, as MAE lays them."""
    B, C, H, W = images.shape
    h, w = H // patch, W // patch
    x = images.reshape(B, C, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, patch * patch * C)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int], channels: int) -> Tensor:
    """patchify undone: (B, N, P·P·C) → (B, C, H, W)."""
    B = patches.shape[0]
    h, w = grid
    x = patches.reshape(B, h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch, w * patch)


class MaskedAutoencoder(nn.Module):
    backbone_prefix = "encoder."  # what fine-tuning keeps

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        vit_fields = {f.name for f in dataclasses.fields(ViTConfig)}
        self.encoder = VisionTransformer(ViTConfig(**{k: v for k, v in dataclasses.asdict(cfg).items()
                                                      if k in vit_fields}))
        D, Dd = cfg.embed_dim, cfg.decoder_embed_dim
        pe = self.encoder.patch_embed
        self.patch_size, self.grid = pe.patch_size[0], pe.grid_size
        prefix = self.encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        fixed = torch.cat([torch.zeros(prefix, Dd), sincos_2d(*self.grid, Dd)])[None]
        self.decoder_pos_embed = nn.Parameter(fixed, requires_grad=False)
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.decoder_blocks = nn.Sequential(*[Block(Dd, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, qkv_bias=True,
                                                    norm_layer=norm) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm(Dd)
        self.decoder_pred = nn.Linear(Dd, self.patch_size ** 2 * cfg.in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        """As facebookresearch/mae: mask token normal(0.02); Linear layers Xavier-uniform, zero bias."""
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def masking(self, batch: int, *, noise: Tensor | None = None, generator: torch.Generator | None = None,
                device=None) -> Masking:
        """Draw the masks of a batch: from `noise` (B, N) if given, else uniform noise from `generator`."""
        if noise is None:
            noise = torch.rand(batch, self.num_patches, generator=generator,
                               device=generator.device if generator is not None else device)
        return random_masking(noise.to(device), self.cfg.mask_ratio)

    def encode(self, images: Tensor, keep: Tensor) -> Tensor:
        """(B, C, H, W), kept indices (B, K) → latent tokens (B, prefix + K, D)."""
        enc = self.encoder
        return enc.encode(enc.prepare_tokens(images, keep=keep))

    def decode(self, latent: Tensor, restore: Tensor) -> Tensor:
        """latent (B, prefix + K, D) → predicted pixels of every patch (B, N, P·P·C)."""
        p = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        B, _, Dd = x.shape
        hidden = self.mask_token.expand(B, restore.shape[1] - (x.shape[1] - p), Dd)
        patches = torch.cat([x[:, p:], hidden], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, Dd))  # back to patch order
        x = torch.cat([x[:, :p], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, p:]

    def targets(self, images: Tensor) -> Tensor:
        """What the decoder predicts: the patches' pixels, each normalised by its own statistics if norm_pix_loss."""
        target = patchify(images, self.patch_size)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        per_patch = ((pred - self.targets(images)) ** 2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: Tensor, *, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> MAEOutput:
        m = self.masking(images.shape[0], noise=noise, generator=generator, device=images.device)
        pred = self.decode(self.encode(images, m.keep), m.restore)
        return MAEOutput(self.loss(images, pred.float(), m.mask), pred, m.mask)

    def reconstruct(self, pred: Tensor, images: Tensor) -> Tensor:
        """Predicted patches → an image (B, C, H, W) in the images' own scale (norm_pix_loss undone per patch
        with the true patch's statistics, as MAE's visualisation does)."""
        if self.cfg.norm_pix_loss:
            target = patchify(images, self.patch_size)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return unpatchify(pred, self.patch_size, self.grid, self.cfg.in_chans)


def mae_config(vit_name: str, **overrides) -> MAEConfig:
    base = vit_config(vit_name)
    fields = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("num_classes", "pos_embed")}
    return dataclasses.replace(MAEConfig(**fields), **overrides)


# The paper's decoder (512 wide, 8 blocks, 16 heads) behind ViT-B/L/H encoders; and small ones for the embedded
# data: a 4-block decoder half the encoder's width.
for _vit, _dec in (("vit_base_patch16_224", {}), ("vit_large_patch16_224", {}), ("vit_huge_patch14_224", {}),
                   ("vit_tiny_patch16_224", dict(decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)),
                   ("vit_small_patch16_224", dict(decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8))):
    register(ModelEntry(f"mae_{_vit}", "mae", mae_config(_vit, **_dec), MaskedAutoencoder, tags=("pretraining",)))
_GRAY = dict(in_chans=1, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
register(ModelEntry("mae_vit_pico_patch2_8", "mae", mae_config("vit_pico_patch2_8", **_GRAY), MaskedAutoencoder,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "digits")))
register(ModelEntry("mae_vit_pico_patch4_28", "mae", mae_config("vit_pico_patch4_28", **_GRAY), MaskedAutoencoder,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "mnist")))

