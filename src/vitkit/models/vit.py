"""Vision Transformer (Dosovitskiy et al., 2021), in the order of the math.

    image (B, C, H, W)
      → patch embedding                     (B, Hp, Wp, D)
      → prepend [CLS] (+ registers), add position embeddings    (B, N, D)
      → depth × pre-LN encoder block        (B, N, D)
      → LayerNorm, pool ([CLS] or mean), optional pre-logits layer, linear head   (B, classes)

State-dict keys follow timm's, so a timm ViT state dict loads with strict=True.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..layers import Block, PatchEmbed, drop_path_rates, resample_abs_pos_embed, sincos_2d
from ..layers.checks import take_indices
from ..registry import ModelEntry, register
from ._common import (check_global_pool, check_intermediate_format, format_intermediates, mask_patches, new_head,
                      pool_tokens)


GELUS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh")}


@dataclass(frozen=True)
class ViTConfig:
    img_size: int | tuple[int, int] = 224   # input resolution the model is built for
    patch_size: int = 16                    # P: each token is one P×P patch
    in_chans: int = 3                       # image channels
    num_classes: int = 1000                 # head outputs; 0 gives no head (features only)
    embed_dim: int = 768                    # D: token width
    depth: int = 12                         # number of encoder blocks
    num_heads: int = 12                     # attention heads per block
    mlp_ratio: float = 4.0                  # MLP hidden width = mlp_ratio · D
    qkv_bias: bool = True                   # bias on the q, k, v projections
    norm_eps: float = 1e-6                  # LayerNorm epsilon: 1e-6 as the ViT release (transformers' ViTs: 1e-12)
    act: str = "gelu"                       # MLP activation: 'gelu' (exact; timm, PyTorch) | 'gelu_tanh' (the tanh
                                            # approximation: Flax's nn.gelu default, so the JAX release's)
    class_token: bool = True                # prepend a learned [CLS] token
    reg_tokens: int = 0                     # learned register tokens after [CLS] (Darcet et al.)
    pos_embed: str = "learn"                # 'learn' | 'sincos' (fixed 2-D) | 'none'
    global_pool: str = "token"              # 'token' ([CLS] output) | 'avg' (mean of patch tokens)
    fc_norm: bool | None = None             # LayerNorm on the pooled feature; None: on exactly for 'avg'
    head_hidden_size: int | None = None     # pre-logits Linear + tanh (the ViT pretraining head), or None
    init_values: float | None = None        # LayerScale initial gain, or None for none
    drop_rate: float = 0.0                  # dropout on MLP/projection outputs and before the head
    pos_drop_rate: float = 0.0              # dropout after adding position embeddings
    attn_drop_rate: float = 0.0             # dropout on attention weights
    drop_path_rate: float = 0.0             # stochastic depth, rising linearly to this at the last block
    dynamic_img_size: bool = False          # accept any image size; position embeddings resampled on the fly
    dynamic_img_pad: bool = False           # pad images up to a multiple of P instead of refusing them
    mask_token: bool = False                # a learned token that prepare_tokens(mask=...) puts in place of
                                            # hidden patches (masked image modelling: SimMIM, BEiT)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        check_global_pool(cfg.global_pool, ("token", "avg"))
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without a [CLS] token")
        self.cfg = cfg
        D = self.embed_dim = self.num_features = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.num_prefix_tokens = int(cfg.class_token) + cfg.reg_tokens + self._extra_prefix_tokens()

        self.patch_embed = self._make_patch_embed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        n_pos = self.patch_embed.num_patches + self.num_prefix_tokens
        if cfg.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, D))
        elif cfg.pos_embed == "sincos":
            grid = sincos_2d(*self.patch_embed.grid_size, D)
            fixed = torch.cat([torch.zeros(self.num_prefix_tokens, D), grid])[None]
            self.pos_embed = nn.Parameter(fixed, requires_grad=False)
        elif cfg.pos_embed == "none":
            self.pos_embed = None
        else:
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none', got {cfg.pos_embed!r}")
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.mask_token else None

        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        if cfg.act not in GELUS:
            raise ValueError(f"act must be one of {', '.join(map(repr, GELUS))}, got {cfg.act!r}")
        self.blocks = nn.Sequential(*[
            Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate,
                  drop_path=dpr, init_values=cfg.init_values, norm_layer=norm_layer, act_layer=GELUS[cfg.act])
            for dpr in drop_path_rates(cfg.drop_path_rate, cfg.depth)
        ])
        use_fc_norm = cfg.global_pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        self.norm = nn.Identity() if use_fc_norm else norm_layer(D)
        self.fc_norm = norm_layer(D) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        if cfg.head_hidden_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(D, cfg.head_hidden_size))
            self.pre_logits.add_module("act", nn.Tanh())
            self.num_features = cfg.head_hidden_size
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # One entry per tensor forward_intermediates returns (timm's convention): width and stride.
        self.feature_info = [{"num_chs": D, "reduction": self.patch_embed.patch_size[0], "module": f"blocks.{i}"}
                             for i in range(cfg.depth)]
        self._build_extra_modules()
        self.init_weights()

    def _make_patch_embed(self, cfg: ViTConfig) -> nn.Module:
        """The image → token grid module, (B, C, H, W) → (B, Hp, Wp, D). A subclass may return another one (the
        hybrid ViT: a ResNet whose feature map is projected); it needs `grid_size`, `num_patches`, `patch_size`
        and a Conv2d `proj`."""
        return PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
                          dynamic=cfg.dynamic_img_size, pad=cfg.dynamic_img_pad)

    def _extra_prefix_tokens(self) -> int:
        """Prefix tokens a subclass adds after [CLS] and the registers (DeiT: the distillation token)."""
        return 0

    def _build_extra_modules(self) -> None:
        """Where a subclass adds its own modules (DeiT: the distillation token and head): after the standard
        ones are built and before init_weights, so that initialisation stays in one place."""

    def init_weights(self) -> None:
        """Learned position embeddings: truncated normal, std 0.02. [CLS] and register tokens: normal, std 1e-6.
        Patch projection: LeCun normal on the flattened patch (as the JAX release). Linear layers: truncated
        normal, std 0.02, zero bias. LayerNorms: unit gain, zero bias (PyTorch's default)."""
        if self.pos_embed is not None and self.pos_embed.requires_grad:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        proj = self.patch_embed.proj
        fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases)."""
        return {"pos_embed", "cls_token", "reg_token"} | ({"mask_token"} if self.mask_token is not None else set())

    # ---- tokens -------------------------------------------------------------------------------
    def _prefix_tokens(self, batch: int) -> list[Tensor]:
        """The learned tokens placed before the patches, each (B, n, D)."""
        return [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]

    def _pos_embed(self, x: Tensor) -> Tensor:
        """x: (B, Hp, Wp, D) patch grid → (B, prefix + Hp·Wp, D) with position embeddings added."""
        B, Hp, Wp, D = x.shape
        pos = self.pos_embed
        if pos is not None and (Hp, Wp) != self.patch_embed.grid_size:
            pos = resample_abs_pos_embed(pos, (Hp, Wp), self.patch_embed.grid_size, self.num_prefix_tokens)
        x = torch.cat(self._prefix_tokens(B) + [x.reshape(B, Hp * Wp, D)], dim=1)
        if pos is not None:
            x = x + pos
        return self.pos_drop(x)

    def prepare_tokens(self, x: Tensor, mask: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) → the tokens the blocks take, (B, prefix + N, D), position embeddings added.

        mask: (B, N) bool, True where a patch is hidden: its embedding is replaced by the learned mask token
            before the position embedding is added (masked image modelling; needs mask_token=True).
        keep: (B, K) indices of the patches to keep, in the order given: only those K patch tokens follow the
            prefix tokens (MAE's encoder sees the kept 25%).
        """
        patches = self.patch_embed(x)  # (B, Hp, Wp, D)
        if mask is not None:
            patches = mask_patches(patches, mask, self.mask_token)
        tokens = self._pos_embed(patches)
        if keep is None:
            return tokens
        p, D = self.num_prefix_tokens, tokens.shape[-1]
        kept = torch.gather(tokens[:, p:], 1, keep[..., None].expand(-1, -1, D))
        return torch.cat([tokens[:, :p], kept], dim=1)

    def encode(self, tokens: Tensor) -> Tensor:
        """tokens (B, N, D) from prepare_tokens → the blocks, then the final LayerNorm."""
        return self.norm(self.blocks(tokens))

    # ---- the common face ------------------------------------------------------------------------
    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, *, norm: bool = False,
                              output_fmt: str = "tokens") -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final normed tokens (B, N, D), [the output of each chosen block]).

        indices: block indices to return (negative counts from the end), or k for the last k; all by default.
        norm: apply the final norm to each intermediate too (as timm's norm=True).
        output_fmt: "tokens" (vitkit's, every token), or timm's "NCHW" (patch maps (B, D, Hp, Wp), timm's
            default: pass it to run code written for timm) or "NLC" (patch tokens (B, Hp·Wp, D)).
        """
        check_intermediate_format(output_fmt)
        wanted = take_indices(len(self.blocks), indices, "blocks", prefix="block")
        patches = self.patch_embed(x)  # (B, Hp, Wp, D)
        x = self._pos_embed(patches)
        taken = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                taken.append(self.norm(x) if norm else x)
        return self.norm(x), format_intermediates(taken, output_fmt, self.num_prefix_tokens, patches.shape[1:3])

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) → tokens (B, N, D), final LayerNorm applied. mask: as prepare_tokens takes it."""
        return self._encode(x) if mask is None else self.encode(self.prepare_tokens(x, mask))

    def _encode(self, x: Tensor, n_out: int | None = None) -> Tensor:
        """x: (B, C, H, W) → normed tokens (B, N, D), or (B, n_out, D) when the last block computes only the
        first n_out tokens' outputs."""
        x = self._pos_embed(self.patch_embed(x))  # (B, N, D)
        if n_out is None:
            return self.norm(self.blocks(x))
        for block in self.blocks[:-1]:
            x = block(x)
        return self.norm(self.blocks[-1](x, n_out=n_out))

    def pool(self, x: Tensor) -> Tensor:
        """tokens (B, N, D) → (B, D): the [CLS] output or the mean of the patch tokens."""
        return pool_tokens(x, self.global_pool, self.num_prefix_tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, N, D) → logits (B, classes), or the features the head sees when pre_logits."""
        x = self.pre_logits(self.head_drop(self.fc_norm(self.pool(x))))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → logits (B, classes): forward_head(forward_features(x)), except that when the head
        reads only the prefix tokens ([CLS] pooling) the last block computes only their outputs. They still
        attend to every token, so the logits are the same; the other tokens' last MLP and projections, about
        1/depth of the model's work, are skipped. A recorder or a forward hook on the last block turns this
        off, so that it sees every token."""
        last = self.blocks[-1]
        sees_all = last.attn.recorder is not None or last._forward_hooks or last._forward_pre_hooks
        n_out = None if self.global_pool != "token" or sees_all else self.num_prefix_tokens
        return self.forward_head(self._encode(x, n_out))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0: no head)."""
        if global_pool is not None:
            check_global_pool(global_pool, ("token", "avg"))
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("this model has no [CLS] token to pool; use global_pool='avg'")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_head(self.num_features, num_classes)


# ---- variants ---------------------------------------------------------------------------------------
# size: (width D, depth, heads, MLP width), from the ViT and DeiT papers. 'pico' is ours: the small
# model the demo trains on 8×8 digits and 28×28 MNIST on a laptop CPU.
VIT_SIZES = {
    "pico": (64, 6, 4, 128),
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}
_LETTER = {"Pi": "pico", "Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}


def vit_config(variant: str, **overrides) -> ViTConfig:
    """Decode a variant the way the papers write it: 'B/16', 'Ti/16', 'H/14', or a timm-style name
    such as 'vit_base_patch16_224', into a ViTConfig."""
    m = re.fullmatch(r"(Pi|Ti|S|B|L|H)/(\d+)", variant)
    if m:
        size, patch, img = _LETTER[m[1]], int(m[2]), 224
    else:
        m = re.fullmatch(r"vit_([a-z]+)_patch(\d+)_(\d+)", variant)
        if not m or m[1] not in VIT_SIZES:
            raise ValueError(f"cannot read ViT variant {variant!r}; write it as 'B/16' or 'vit_base_patch16_224'")
        size, patch, img = m[1], int(m[2]), int(m[3])
    width, depth, heads, mlp = VIT_SIZES[size]
    base = ViTConfig(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                     mlp_ratio=mlp / width)
    return dataclasses.replace(base, **overrides)


for _size in ("tiny", "small", "base", "large", "huge"):
    for _patch in (8, 14, 16, 32):
        register(ModelEntry(f"vit_{_size}_patch{_patch}_224", "vit", vit_config(f"vit_{_size}_patch{_patch}_224"),
                            VisionTransformer))
for _name in ("vit_tiny_patch16_384", "vit_small_patch16_384", "vit_base_patch16_384", "vit_base_patch32_384",
              "vit_large_patch16_384"):
    register(ModelEntry(_name, "vit", vit_config(_name), VisionTransformer))

# Small-data models for the embedded sets: grayscale, 10 classes.
_GRAY = dict(in_chans=1, num_classes=10)
register(ModelEntry("vit_pico_patch2_8", "vit", vit_config("vit_pico_patch2_8", **_GRAY), VisionTransformer,
                    mean=(0.5,), std=(0.5,), tags=("digits",)))
register(ModelEntry("vit_pico_patch4_28", "vit", vit_config("vit_pico_patch4_28", **_GRAY), VisionTransformer,
                    mean=(0.5,), std=(0.5,), tags=("mnist",)))
