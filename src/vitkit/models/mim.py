"""Masked image modelling as BEiT does it (Bao et al., 2022), with SimMIM's pixel target beside it.

    images ─ patches ─ blockwise mask (~40%): hidden patches → the learned mask token ─ encoder (ViT or BEiT)
           ─ LayerNorm ─ head on every patch token ─ loss on the hidden patches only:
      target 'tokens'  cross-entropy against each hidden patch's visual token (BEiT)
      target 'pixels'  L1 against each hidden patch's pixels (SimMIM, Xie et al., 2022)

The encoder is a plain VisionTransformer or Beit built with mask_token=True and no head (`encoder.`): its weights
are those of the backbone, so `vitkit train --init` fine-tunes a MIM run like any ViT or BEiT checkpoint. The
names follow transformers' BeitForMaskedImageModeling (`layernorm` → norm, `lm_head` → head), whose folders
vitkit reads (weights/hf.py).

The visual tokens. BEiT's come from DALL-E's dVAE, which cannot be downloaded here, so vitkit's tokenizer is a
k-means codebook over the training images' patches (PatchCodebook): each patch's token is its nearest centroid.
It is fitted on the training split before the first step and stored in the checkpoint (`codebook.centroids`),
so a run, its resume and its evaluation all use the same tokens. It is a stand-in: a dVAE's tokens are learned to
reconstruct, k-means' to quantise pixels, and both give the encoder a discrete target that is not the pixels
themselves, which is the point of BEiT's objective.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ModelEntry, model_config, register
from .beit import Beit, BeitConfig
from .mae import patchify
from .vit import VisionTransformer, ViTConfig

TARGETS = ("tokens", "pixels")


@dataclass(frozen=True)
class MIMOptions:
    target: str = "tokens"          # 'tokens' (BEiT: each hidden patch's codebook entry) or 'pixels' (SimMIM)
    vocab_size: int = 8192          # codebook entries: the head's outputs for 'tokens'
    mask_ratio: float = 0.4         # share of the patches the blockwise generator aims to hide
    mask_min_patches: int | None = None  # the smallest block; None: BEiT's 16 of a 14×14 grid, scaled to the grid
    mask_min_aspect: float = 0.3    # each block's height/width lies between this and its inverse


@dataclass(frozen=True)
class ViTMIMConfig(ViTConfig, MIMOptions):
    num_classes: int = 0
    mask_token: bool = True


@dataclass(frozen=True)
class BeitMIMConfig(BeitConfig, MIMOptions):
    num_classes: int = 0
    mask_token: bool = True


class MIMOutput(NamedTuple):
    loss: Tensor        # () over the hidden patches only
    logits: Tensor      # (B, N, vocab_size) token scores, or (B, N, P·P·C) pixels, for every patch
    mask: Tensor        # (B, N) bool, True where the patch was hidden


# ---- BEiT's blockwise masking ----------------------------------------------------------------------------------
class BlockMasking:
    """BEiT's masking generator: rectangles of patches are hidden until about `num_masked` are.

    Each rectangle has an area drawn uniformly in [min_patches, what is left of the budget] and an aspect ratio
    log-uniform in [min_aspect, 1/min_aspect]; it is kept only if it adds at least one new patch and no more than
    the budget allows, ten tries each. When ten tries add nothing the mask stops short, so it can hide fewer than
    `num_masked` patches (more often on small grids), never more. One difference from BEiT's code: a rectangle
    whose rounded height × width falls below min_patches is retried, so every block really has min_patches.
    Draws come from a torch.Generator, so a mask is a function of the generator's seed.
    """

    def __init__(self, grid: tuple[int, int], num_masked: int, min_patches: int = 16, min_aspect: float = 0.3,
                 max_patches: int | None = None):
        self.height, self.width = grid
        if not 0 < min_patches <= num_masked <= self.height * self.width:
            raise ValueError(f"blockwise masking of a {self.height}×{self.width} grid needs 0 < min_patches "
                             f"({min_patches}) ≤ patches to mask ({num_masked}) ≤ {self.height * self.width}; "
                             f"lower mask_min_patches or raise mask_ratio")
        if not 0 < min_aspect <= 1:
            raise ValueError(f"mask_min_aspect must be in (0, 1], e.g. 0.3; got {min_aspect}")
        self.num_masked, self.min_patches = num_masked, min_patches
        self.max_patches = num_masked if max_patches is None else max_patches
        self.log_aspect = (math.log(min_aspect), -math.log(min_aspect))

    def blocks(self, generator: torch.Generator) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
        """One mask (height, width) bool and the rectangles (top, left, h, w) that made it, in order."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        rects: list[tuple[int, int, int, int]] = []
        count = 0
        while count < self.num_masked:
            budget = min(self.num_masked - count, self.max_patches)
            added = self._block(mask, budget, generator, rects)
            if added == 0:
                break
            count += added
        return mask, rects

    def _block(self, mask: Tensor, budget: int, gen: torch.Generator, rects: list) -> int:
        for _ in range(10):
            u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
            area = self.min_patches + u[0] * (budget - self.min_patches)
            aspect = math.exp(self.log_aspect[0] + u[1] * (self.log_aspect[1] - self.log_aspect[0]))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (h * w >= self.min_patches and h < self.height and w < self.width):
                continue
            top, left = int(u[2] * (self.height - h + 1)), int(u[3] * (self.width - w + 1))
            region = mask[top:top + h, left:left + w]
            new = h * w - int(region.sum())
            if 0 < new <= budget:
                region.fill_(True)
                rects.append((top, left, h, w))
                return new
        return 0

    def __call__(self, batch: int, generator: torch.Generator, device=None) -> Tensor:
        """(batch, height·width) bool masks, one per sample, drawn in turn from `generator`."""
        masks = torch.stack([self.blocks(generator)[0].flatten() for _ in range(batch)])
        return masks if device is None else masks.to(device)


# ---- the k-means tokenizer -------------------------------------------------------------------------------------
class PatchCodebook(nn.Module):
    """K centroids over flattened patches (P·P·C): a patch's visual token is the index of its nearest centroid."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("centroids", torch.zeros(size, dim))

    @property
    def fitted(self) -> bool:
        return bool(self.centroids.abs().sum() > 0)

    def encode(self, patches: Tensor) -> Tensor:
        """(..., dim) → (...) long: the nearest centroid by Euclidean distance."""
        if not self.fitted:
            raise RuntimeError("the MIM model's codebook is not fitted: call model.codebook.fit(patches), or train "
                               "with vitkit train --objective mim, which fits it on the training images")
        flat = patches.reshape(-1, patches.shape[-1]).float()
        c = self.centroids.float()
        d = (c * c).sum(1)[None] - 2 * flat @ c.T  # |x - c|² without the |x|² that every c shares
        return d.argmin(dim=1).reshape(patches.shape[:-1])

    @torch.no_grad()
    def fit(self, patches: Tensor, generator: torch.Generator, iters: int = 25) -> dict[str, float]:
        """k-means (Lloyd's iterations from k-means++ seeds) on patches (M, dim); returns the fit's figures.

        An emptied cluster is re-seeded at the patch farthest from its centroid."""
        x = patches.reshape(-1, patches.shape[-1]).float()
        K = self.centroids.shape[0]
        if len(x) < K:
            raise ValueError(f"a codebook of {K} entries needs at least {K} patches to fit, got {len(x)}; lower "
                             f"vocab_size (--opt vocab_size=...) or use more training images")
        c = x[torch.randint(len(x), (1,), generator=generator)]
        d2 = ((x - c) ** 2).sum(1)
        for _ in range(1, K):  # k-means++: each seed drawn with probability ∝ squared distance to the nearest
            pick = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1, generator=generator)
            c = torch.cat([c, x[pick]])
            d2 = torch.minimum(d2, ((x - x[pick]) ** 2).sum(1))
        for _ in range(iters):
            d = (c * c).sum(1)[None] - 2 * x @ c.T
            assign = d.argmin(1)
            counts = torch.bincount(assign, minlength=K)
            sums = torch.zeros_like(c).index_add_(0, assign, x)
            empty = counts == 0
            c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
            if empty.any():
                far = ((x - c[assign]) ** 2).sum(1).topk(int(empty.sum())).indices
                c[empty] = x[far]
        self.centroids.copy_(c)
        err = ((x - c[self.encode(x)]) ** 2).mean()
        used = torch.bincount(self.encode(x), minlength=K)
        return {"quantisation_mse": float(err), "entries_used": int((used > 0).sum()),
                "patch_variance": float(x.var(0).sum() / x.shape[1])}


# ---- the model -------------------------------------------------------------------------------------------------
def _backbone_config(cfg):
    base = BeitConfig if isinstance(cfg, BeitConfig) else ViTConfig
    names = {f.name for f in dataclasses.fields(base)}
    return base(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


class MaskedImageModel(nn.Module):
    backbone_prefix = "encoder."  # what fine-tuning keeps

    def __init__(self, cfg: ViTMIMConfig | BeitMIMConfig):
        super().__init__()
        if cfg.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}, got {cfg.target!r}")
        self.cfg = cfg
        self.encoder = (Beit if isinstance(cfg, BeitConfig) else VisionTransformer)(_backbone_config(cfg))
        pe = self.encoder.patch_embed
        self.patch_size, self.grid = pe.patch_size[0], pe.grid_size
        D, pixels = cfg.embed_dim, self.patch_size ** 2 * cfg.in_chans
        self.norm = nn.LayerNorm(D, eps=getattr(cfg, "norm_eps", 1e-6))
        self.head = nn.Linear(D, cfg.vocab_size if cfg.target == "tokens" else pixels)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.codebook = PatchCodebook(cfg.vocab_size, pixels) if cfg.target == "tokens" else None
        n = self.grid[0] * self.grid[1]
        smallest = cfg.mask_min_patches or max(1, round(16 * n / 196))
        self.masking = BlockMasking(self.grid, max(1, round(n * cfg.mask_ratio)), smallest, cfg.mask_min_aspect)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def predict(self, images: Tensor, mask: Tensor) -> Tensor:
        """(B, C, H, W), mask (B, N) bool → the head's output for every patch, (B, N, vocab_size or P·P·C)."""
        enc = self.encoder
        tokens = enc.encode(enc.prepare_tokens(images, mask=mask))
        return self.head(self.norm(tokens[:, enc.num_prefix_tokens:]))

    def targets(self, images: Tensor) -> Tensor:
        """(B, N) visual tokens (long) or (B, N, P·P·C) pixels: what each patch's output is scored against."""
        patches = patchify(images, self.patch_size)
        return self.codebook.encode(patches) if self.codebook is not None else patches

    def loss(self, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy (tokens) or mean absolute error (pixels) over the hidden patches alone."""
        if self.codebook is not None:
            return F.cross_entropy(logits[mask].float(), targets[mask])
        return (logits[mask].float() - targets[mask]).abs().mean()

    def forward(self, images: Tensor, *, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> MIMOutput:
        """mask: (B, N) bool, True = hidden; by default drawn by the blockwise generator from `generator`."""
        if mask is None:
            mask = self.masking(images.shape[0], generator or torch.default_generator, images.device)
        mask = mask.to(images.device, torch.bool)
        logits = self.predict(images, mask)
        return MIMOutput(self.loss(logits, self.targets(images), mask), logits, mask)


def mim_config(backbone: str, **overrides):
    base = model_config(backbone)
    kind = BeitMIMConfig if isinstance(base, BeitConfig) else ViTMIMConfig
    fields = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("num_classes", "mask_token")}
    return dataclasses.replace(kind(**fields), **overrides)


# The paper's setting behind BEiT and ViT backbones (40% of a 14×14 grid in blocks of 16 or more, 8192 tokens), and
# small ones for the embedded data: the smallest block scaled with the grid (4 of 7×7; 2 of 4×4), 128 or 64 tokens.
for _backbone in ("beit_base_patch16_224", "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"):
    register(ModelEntry(f"mim_{_backbone}", "mim", mim_config(_backbone), MaskedImageModel, tags=("pretraining",)))
register(ModelEntry("mim_vit_pico_patch4_28", "mim",
                    mim_config("vit_pico_patch4_28", vocab_size=128), MaskedImageModel,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "mnist")))
register(ModelEntry("mim_vit_pico_patch2_8", "mim",
                    mim_config("vit_pico_patch2_8", vocab_size=64, mask_min_patches=2), MaskedImageModel,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "digits")))
