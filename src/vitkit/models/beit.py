"""BEiT (Bao et al., 2022): a ViT with a relative position bias in every block and LayerScale.

    image (B, C, H, W)
      → patch embedding, prepend [CLS] (+ absolute position embeddings if used)   (B, 1 + Hp·Wp, D)
      → depth × block: x + DropPath(γ₁ · Attn(LN(x), bias = relative position bias))
                       x + DropPath(γ₂ · MLP(LN(x)))                               (B, N, D)
      → mean of the patch tokens, LayerNorm (fc_norm), linear head                 (B, classes)

What differs from the ViT: the attention has a q and a v bias but no k bias (timm's `q_bias`,
`v_bias`), a learned relative position bias over the whole patch grid plus [CLS] (layers/rel_pos.py,
class_token=True) in each block, and LayerScale gains stored on the block as `gamma_1`/`gamma_2`.
State-dict keys follow timm's, so a timm BEiT state dict loads with strict=True.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import AttentionBase
from ..layers.block import LayerNorm6
from ..layers.checks import take_indices
from ..layers.drop import DropPath, drop_path_rates
from ..layers.layer_scale import layer_scale, layer_scale_gain
from ..layers.mlp import Mlp
from ..layers.patch_embed import ImageSizeError, PatchEmbed
from ..layers.rel_pos import RelativePositionBias, add_relative_position_bias, gather_bias
from ..registry import ModelEntry, register
from ._common import check_global_pool, check_intermediate_format, format_intermediates, mask_patches, pool_tokens


@dataclass(frozen=True)
class BeitConfig:
    img_size: int | tuple[int, int] = 224   # input resolution; the relative position bias covers its patch grid
    patch_size: int = 16                    # P: each token is one P×P patch
    in_chans: int = 3                       # image channels
    num_classes: int = 1000                 # head outputs; 0 gives no head (features only)
    embed_dim: int = 768                    # D: token width
    depth: int = 12                         # number of blocks
    num_heads: int = 12                     # attention heads per block
    mlp_ratio: float = 4.0                  # MLP hidden width = mlp_ratio · D
    qkv_bias: bool = True                   # learned q and v biases (k has none, by design)
    use_abs_pos_emb: bool = False           # also add learned absolute position embeddings
    use_rel_pos_bias: bool = True           # a relative position bias table in every block
    use_shared_rel_pos_bias: bool = False   # one relative position bias table shared by all blocks
    init_values: float | None = 0.1         # LayerScale initial gain (γ₁, γ₂); None or 0 for no LayerScale
    global_pool: str = "avg"                # 'avg' (mean of patch tokens) | 'token' ([CLS] output)
    use_fc_norm: bool | None = None         # LayerNorm after pooling instead of before; None: on exactly for 'avg'
    head_init_scale: float = 0.001          # the head's initial weights and bias are scaled by this
    drop_rate: float = 0.0                  # dropout before the head
    pos_drop_rate: float = 0.0              # dropout after the embeddings
    proj_drop_rate: float = 0.0             # dropout on MLP and attention-projection outputs
    attn_drop_rate: float = 0.0             # dropout on attention weights
    drop_path_rate: float = 0.0             # stochastic depth, rising linearly to this at the last block
    mask_token: bool = False                # a learned token that prepare_tokens(mask=...) puts in place of
                                            # hidden patches (BEiT's masked image modelling)


class BeitAttention(AttentionBase):
    """Self-attention with q/v biases (no k bias) and an optional relative position bias over grid + [CLS].

    Keys as timm's: qkv.weight (no qkv.bias), q_bias, v_bias, proj, relative_position_bias_table.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, grid: tuple[int, int] | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.register_buffer("k_bias", torch.zeros(dim), persistent=False)  # always zero, never saved
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if grid is not None:
            add_relative_position_bias(self, grid, num_heads, class_token=True)
        else:
            self.relative_position_bias_table = None

    def forward(self, x: Tensor, shared_bias: Tensor | None = None) -> Tensor:
        """x: (B, N, D), shared_bias: (heads, N, N) or None → (B, N, D)."""
        B, N, _ = x.shape
        bias = None if self.q_bias is None else torch.cat([self.q_bias, self.k_bias, self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3D)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        rel = None
        if self.relative_position_bias_table is not None:
            rel = gather_bias(self.relative_position_bias_table, self.relative_position_index)  # (H, N, N)
        if shared_bias is not None:
            rel = shared_bias if rel is None else rel + shared_bias
        return self._attend(q, k, v, None, rel, causal=False)


class BeitBlock(nn.Module):
    """x + DropPath(γ₁ · Attn(LN(x))), then x + DropPath(γ₂ · MLP(LN(x))).

    γ₁, γ₂ are LayerScale gains; timm keeps them on the block as `gamma_1`, `gamma_2` (not in a LayerScale
    submodule as in ViT), so they are plain parameters here too.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 grid: tuple[int, int] | None = None, init_values: float | None = None,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = BeitAttention(dim, num_heads, qkv_bias, grid, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.init_values = init_values
        self.gamma_1 = layer_scale_gain(dim, init_values or None)  # timm: 0 or None means no LayerScale
        self.gamma_2 = layer_scale_gain(dim, init_values or None)

    def forward(self, x: Tensor, shared_bias: Tensor | None = None) -> Tensor:
        """x: (B, N, D) → (B, N, D)."""
        a = self.attn(self.norm1(x), shared_bias)
        x = x + self.drop_path1(layer_scale(a, self.gamma_1))
        m = self.mlp(self.norm2(x))
        return x + self.drop_path2(layer_scale(m, self.gamma_2))


class Beit(nn.Module):
    def __init__(self, cfg: BeitConfig):
        super().__init__()
        check_global_pool(cfg.global_pool, ("avg", "token"))
        self.cfg = cfg
        D = self.embed_dim = self.num_features = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.num_prefix_tokens = 1

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, D)) \
            if cfg.use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.mask_token else None
        self.rel_pos_bias = RelativePositionBias(grid, cfg.num_heads, class_token=True) \
            if cfg.use_shared_rel_pos_bias else None

        self.blocks = nn.ModuleList([
            BeitBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, grid if cfg.use_rel_pos_bias else None,
                      cfg.init_values, cfg.proj_drop_rate, cfg.attn_drop_rate, dpr)
            for dpr in drop_path_rates(cfg.drop_path_rate, cfg.depth)
        ])
        use_fc_norm = cfg.global_pool == "avg" if cfg.use_fc_norm is None else cfg.use_fc_norm
        self.norm = nn.Identity() if use_fc_norm else LayerNorm6(D)
        self.fc_norm = LayerNorm6(D) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # One entry per tensor forward_intermediates returns: one per block.
        self.feature_info = [{"num_chs": D, "reduction": self.patch_embed.patch_size[0], "module": f"blocks.{i}"}
                             for i in range(cfg.depth)]
        self.init_weights()

    def init_weights(self) -> None:
        """As BEiT's release (and timm): Linear layers truncated normal, std 0.02, zero bias; [CLS] and absolute
        position embeddings and the mask token truncated normal, std 0.02; q/v biases and relative position bias tables zero;
        LayerScale gains γ = init_values. Then each block's output projections (attn.proj, mlp.fc2) are divided
        by √(2·(layer + 1)), and the head's weight and bias are scaled by head_init_scale. Patch projection
        (conv): PyTorch's default. LayerNorms: unit gain, zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.cls_token, self.pos_embed, self.mask_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for n, p in self.named_parameters():
            if n.endswith(("relative_position_bias_table", "q_bias", "v_bias")):
                nn.init.zeros_(p)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks):
                if block.gamma_1 is not None:
                    block.gamma_1.fill_(block.init_values)
                    block.gamma_2.fill_(block.init_values)
                block.attn.proj.weight.div_(math.sqrt(2.0 * (layer + 1)))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * (layer + 1)))
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
            with torch.no_grad():
                self.head.weight.mul_(self.cfg.head_init_scale)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases)."""
        names = {"pos_embed", "cls_token", "mask_token"}
        return names | {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    # ---- tokens ---------------------------------------------------------------------------------------------
    def prepare_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) → the tokens the blocks take, (B, 1 + Hp·Wp, D).

        mask: (B, Hp·Wp) bool, True where a patch is hidden: its embedding is replaced by the learned mask token
            before [CLS] is prepended (masked image modelling; needs mask_token=True), as BEiT does it.
        """
        if x.ndim == 4 and tuple(x.shape[-2:]) != self.patch_embed.img_size:
            H, W = self.patch_embed.img_size
            Gh, Gw = self.patch_embed.grid_size
            raise ImageSizeError(
                f"BEiT was built for {H}×{W} images but got {x.shape[-2]}×{x.shape[-1]}: its relative position bias "
                f"covers a {Gh}×{Gw} patch grid exactly; resize the images to {H}×{W}, or create the model with "
                f"img_size=({x.shape[-2]}, {x.shape[-1]})")
        x = self.patch_embed(x)  # (B, Hp, Wp, D)
        if mask is not None:
            x = mask_patches(x, mask, self.mask_token)
        B, Hp, Wp, D = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, Hp * Wp, D)], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def encode(self, tokens: Tensor) -> Tensor:
        """tokens (B, N, D) from prepare_tokens → the blocks, then `norm` (identity when fc_norm is used)."""
        shared = self._shared_bias()
        for block in self.blocks:
            tokens = block(tokens, shared)
        return self.norm(tokens)

    def _shared_bias(self) -> Tensor | None:
        return self.rel_pos_bias() if self.rel_pos_bias is not None else None

    # ---- the common face ------------------------------------------------------------------------------------
    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, *, norm: bool = False,
                              output_fmt: str = "tokens") -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final tokens (B, N, D) after `norm`, [the output of each chosen block]).

        indices: block indices to return (negative counts from the end), or k for the last k; all by default.
        norm: apply the final norm to each intermediate too (as timm's norm=True).
        output_fmt: "tokens" (vitkit's, every token), or timm's "NCHW" (patch maps (B, D, Hp, Wp), timm's
            default: pass it to run code written for timm) or "NLC" (patch tokens (B, Hp·Wp, D)).
        """
        check_intermediate_format(output_fmt)
        wanted = take_indices(len(self.blocks), indices, "blocks", prefix="block")
        x, shared, taken = self.prepare_tokens(x), self._shared_bias(), []
        for i, block in enumerate(self.blocks):
            x = block(x, shared)
            if i in wanted:
                taken.append(self.norm(x) if norm else x)
        return self.norm(x), format_intermediates(taken, output_fmt, 1, self.patch_embed.grid_size)  # 1: [CLS]

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) → tokens (B, N, D) after `norm` (identity when fc_norm is used instead). mask: as
        prepare_tokens takes it."""
        return self.encode(self.prepare_tokens(x, mask))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, N, D) → logits (B, classes), or the features the head sees when pre_logits."""
        x = pool_tokens(x, self.global_pool, self.num_prefix_tokens)  # (B, D)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0: no head)."""
        if global_pool is not None:
            check_global_pool(global_pool, ("avg", "token"))
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self._init_head()


# ---- variants ---------------------------------------------------------------------------------------------------
# name: (width D, depth, heads, LayerScale init), from the BEiT paper (base and large).
BEIT_SIZES = {
    "base": (768, 12, 12, 0.1),
    "large": (1024, 24, 16, 1e-5),
}
BEIT_TINY = dict(img_size=32, embed_dim=16, depth=2, num_heads=2)  # a 2×2 patch grid

for _size, (_dim, _depth, _heads, _init) in BEIT_SIZES.items():
    register(ModelEntry(
        f"beit_{_size}_patch16_224", "beit",
        BeitConfig(embed_dim=_dim, depth=_depth, num_heads=_heads, init_values=_init),
        Beit, tiny=BEIT_TINY))
