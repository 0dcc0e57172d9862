"""CaiT (Touvron et al., 2021, "Going deeper with Image Transformers"), in the order of the math.

    image (B, C, H, W)
      → patch embedding, add position embeddings (patches only, no [CLS])         (B, N, D)
      → depth × self-attention block: talking-heads attention, LayerScale          (B, N, D)
      → depth_token_only × class-attention block: only [CLS] queries,
        keys/values are [CLS] + patches; only [CLS] is updated                     [CLS] (B, 1, D)
      → concat [CLS] and patches, LayerNorm                                        (B, 1 + N, D)
      → [CLS] (or mean of patches) → linear head                                   (B, classes)

State-dict keys follow timm's, so a timm CaiT state dict loads with strict=True. One detail: timm's blocks
hold their LayerScale gains as parameters `gamma_1`, `gamma_2` on the block, made and applied by the
shared layers.layer_scale functions.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import DropPath, LayerNorm6, Mlp, PatchEmbed, attend, layer_scale, layer_scale_gain
from ..layers.attention import AttentionBase
from ..layers.checks import take_indices
from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register
from ._common import check_global_pool, check_intermediate_format, format_intermediates, new_head, pool_tokens


def _mix_heads(linear: nn.Linear, scores: Tensor) -> Tensor:
    """Talking heads: a linear map across the head axis. scores: (B, H, Nq, Nk) → (B, H, Nq, Nk)."""
    return linear(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # mix over H at every (query, key)


class TalkingHeadAttention(AttentionBase):
    """Self-attention whose heads exchange information (Shazeer et al., 2020): the scores are mixed across
    heads by `proj_l` before the softmax, and the weights by `proj_w` after it. Keys as timm's.

    A recorder receives the weights after `proj_w`, the ones that multiply the values.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_l = nn.Linear(num_heads, num_heads)  # mixes the heads' scores (pre-softmax)
        self.proj_w = nn.Linear(num_heads, num_heads)  # mixes the heads' weights (post-softmax)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, D) → (B, N, D). The head mixing needs the explicit path of `attend`."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        res = attend(q, k, v, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0,
                     need_weights=self.recorder is not None,
                     logits_hook=lambda s: _mix_heads(self.proj_l, s),
                     weights_hook=lambda w: _mix_heads(self.proj_w, w))
        if self.recorder is not None:
            self.recorder.record(self.name, res.weights)
        x = res.out.transpose(1, 2).flatten(2)  # (B, H, N, hd) → (B, N, H·hd)
        return self.proj_drop(self.proj(x))


class ClassAttention(AttentionBase):
    """Attention in which only [CLS] asks: the query is [CLS], the keys and values are [CLS] and every patch.
    Separate q, k, v projections, keys as timm's. Recorded weights are (B, H, 1, 1 + N)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1 + N, D), [CLS] first → the [CLS] update (B, 1, D)."""
        B, N, _ = x.shape
        q = self.q(x[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, hd)
        k = self.k(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)        # (B, H, 1+N, hd)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)        # (B, H, 1+N, hd)
        return self._attend(q, k, v, mask=None, bias=None, causal=False)  # (B, 1, D)


class LayerScaleBlock(nn.Module):
    """x + DropPath(γ₁ · TalkingHeads(LN(x))), then x + DropPath(γ₂ · MLP(LN(x))).  x: (B, N, D) → (B, N, D).

    γ₁, γ₂ are LayerScale gains, held on the block as `gamma_1`, `gamma_2` (timm's keys)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = TalkingHeadAttention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.gamma_1 = layer_scale_gain(dim, init_values)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.gamma_2 = layer_scale_gain(dim, init_values)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(layer_scale(self.attn(self.norm1(x)), self.gamma_1))
        return x + self.drop_path(layer_scale(self.mlp(self.norm2(x)), self.gamma_2))


class ClassAttentionBlock(nn.Module):
    """Updates [CLS] only: c + γ₁ · ClassAttn(LN([c, x])), then c + γ₂ · MLP(LN(c)). The patches x pass
    through unchanged, so this block returns only the new [CLS]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float):
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias)
        self.gamma_1 = layer_scale_gain(dim, init_values)
        self.norm2 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_2 = layer_scale_gain(dim, init_values)

    def forward(self, x: Tensor, cls: Tensor) -> Tensor:
        """x: patches (B, N, D), cls: (B, 1, D) → the updated cls (B, 1, D)."""
        u = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        cls = cls + layer_scale(self.attn(self.norm1(u)), self.gamma_1)
        return cls + layer_scale(self.mlp(self.norm2(cls)), self.gamma_2)


@dataclass(frozen=True)
class CaitConfig:
    img_size: int | tuple[int, int] = 224   # input resolution the model is built for
    patch_size: int = 16                    # P: each token is one P×P patch
    in_chans: int = 3                       # image channels
    num_classes: int = 1000                 # head outputs; 0 gives no head (features only)
    embed_dim: int = 192                    # D: token width
    depth: int = 24                         # self-attention (talking-heads) blocks over the patches
    num_heads: int = 4                      # attention heads in every block
    mlp_ratio: float = 4.0                  # MLP hidden width = mlp_ratio · D in the self-attention blocks
    qkv_bias: bool = True                   # bias on the q, k, v projections
    init_values: float = 1e-5               # LayerScale initial gain (1e-5 to depth 24, 1e-6 deeper, as CaiT)
    depth_token_only: int = 2               # class-attention blocks, where only [CLS] is updated
    mlp_ratio_token_only: float = 4.0       # MLP hidden width in the class-attention blocks
    global_pool: str = "token"              # 'token' ([CLS] output) | 'avg' (mean of patch tokens)
    drop_rate: float = 0.0                  # dropout before the head
    pos_drop_rate: float = 0.0              # dropout after adding position embeddings
    proj_drop_rate: float = 0.0             # dropout on attention/MLP outputs in the self-attention blocks
    attn_drop_rate: float = 0.0             # dropout on attention weights in the self-attention blocks
    drop_path_rate: float = 0.0             # stochastic depth, the same rate in every self-attention block


class Cait(nn.Module):
    def __init__(self, cfg: CaitConfig):
        super().__init__()
        check_global_pool(cfg.global_pool, ("token", "avg"))
        self.cfg = cfg
        D = self.embed_dim = self.num_features = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.num_prefix_tokens = 1

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, D))  # patches only
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.blocks = nn.Sequential(*[
            LayerScaleBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.init_values,
                            proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=cfg.drop_path_rate)
            for _ in range(cfg.depth)
        ])
        self.blocks_token_only = nn.ModuleList([
            ClassAttentionBlock(D, cfg.num_heads, cfg.mlp_ratio_token_only, cfg.qkv_bias, cfg.init_values)
            for _ in range(cfg.depth_token_only)
        ])
        self.norm = LayerNorm6(D)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # One entry per tensor forward_intermediates returns: the patch tokens after each self-attention block.
        self.feature_info = [{"num_chs": D, "reduction": self.patch_embed.patch_size[0], "module": f"blocks.{i}"}
                             for i in range(cfg.depth)]
        self.init_weights()

    def init_weights(self) -> None:
        """Position embeddings and [CLS]: truncated normal, std 0.02. Linear layers (q/k/v, projections, the
        talking-heads mixers proj_l/proj_w, MLPs, head): truncated normal, std 0.02, zero bias. LayerNorms:
        unit gain, zero bias. LayerScale gains: init_values. Patch projection: PyTorch's Conv2d default
        (Kaiming uniform), which timm's CaiT leaves in place."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.patch_embed.proj.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (LayerScaleBlock, ClassAttentionBlock)):
                nn.init.constant_(m.gamma_1, self.cfg.init_values)
                nn.init.constant_(m.gamma_2, self.cfg.init_values)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases)."""
        return {"pos_embed", "cls_token"}

    # ---- the common face ------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → patch tokens (B, N, D) with position embeddings added."""
        x = self.patch_embed(x)  # (B, Hp, Wp, D)
        return self.pos_drop(x.flatten(1, 2) + self.pos_embed)  # (B, N, D)

    def _class_attention(self, x: Tensor) -> Tensor:
        """Patches (B, N, D) → (B, 1 + N, D): [CLS], updated by the class-attention blocks, then the patches
        unchanged."""
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        for block in self.blocks_token_only:
            cls = block(x, cls)
        return torch.cat([cls, x], dim=1)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, *, norm: bool = False,
                              output_fmt: str = "tokens") -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final normed tokens (B, 1 + N, D), [patch tokens (B, N, D) after each chosen
        self-attention block]). The intermediates are outputs of `blocks`: there is no [CLS] yet at that stage,
        and the class-attention blocks (which update only [CLS]) are not among them.

        indices: block indices to return (negative counts from the end), or k for the last k; all by default.
        norm: apply the final norm to each intermediate too (as timm's norm=True).
        output_fmt: "tokens" (vitkit's, every token), or timm's "NCHW" (patch maps (B, D, Hp, Wp), timm's
            default: pass it to run code written for timm) or "NLC" (patch tokens (B, Hp·Wp, D)).
        """
        check_intermediate_format(output_fmt)
        wanted = take_indices(len(self.blocks), indices, "blocks", prefix="block")
        x = self._embed(x)
        taken = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                taken.append(self.norm(x) if norm else x)
        final = self.norm(self._class_attention(x))
        return final, format_intermediates(taken, output_fmt, 0, self.patch_embed.grid_size)  # no prefix yet

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → tokens (B, 1 + N, D), [CLS] first, final LayerNorm applied."""
        return self.norm(self._class_attention(self.blocks(self._embed(x))))

    def pool(self, x: Tensor) -> Tensor:
        """tokens (B, 1 + N, D) → (B, D): the [CLS] output or the mean of the patch tokens."""
        return pool_tokens(x, self.global_pool, self.num_prefix_tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, 1 + N, D) → logits (B, classes), or the pooled features (B, D) when pre_logits."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0: no head)."""
        if global_pool is not None:
            check_global_pool(global_pool, ("token", "avg"))
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_head(self.num_features, num_classes)


# ---- variants ---------------------------------------------------------------------------------------
# size: (width D, heads), from the CaiT paper. The name gives the depth and the image size: cait_s24_224 is
# size S, 24 self-attention blocks, 224×224 images. The deeper S and M models start LayerScale at 1e-6.
CAIT_SIZES = {"xxs": (192, 4), "xs": (288, 6), "s": (384, 8), "m": (768, 16)}
_INIT_1E6 = {"s36", "m36", "m48"}


def cait_config(variant: str, **overrides) -> CaitConfig:
    """Decode a timm-style name such as 'cait_xxs24_224' into a CaitConfig."""
    m = re.fullmatch(r"cait_([a-z]+)(\d+)_(\d+)", variant)
    if not m or m[1] not in CAIT_SIZES:
        raise ValueError(f"cannot read CaiT variant {variant!r}; write it as 'cait_<size><depth>_<img>', e.g. "
                         f"'cait_s24_224', with size one of {', '.join(CAIT_SIZES)}")
    width, heads = CAIT_SIZES[m[1]]
    base = CaitConfig(img_size=int(m[3]), embed_dim=width, depth=int(m[2]), num_heads=heads,
                      init_values=1e-6 if f"{m[1]}{m[2]}" in _INIT_1E6 else 1e-5)
    return dataclasses.replace(base, **overrides)


TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=4)  # smoke-test size (keeps both class-attention blocks)

for _name in ("cait_xxs24_224", "cait_s24_224"):
    register(ModelEntry(_name, "cait", cait_config(_name), Cait, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        tiny=dict(TINY)))
