"""Swin Transformer (Liu et al., 2021): attention inside local windows, shifted every other block.

    image (B, C, H, W)
      → patch embedding + LayerNorm                       (B, H/P, W/P, D)
      → 4 stages; stage i > 0 starts with patch merging   (B, H/(P·2^i), W/(P·2^i), D·2^i)
          each block: x + DropPath(W-MSA(LN(x)))  (windows shifted by half a window in odd blocks)
                      x + DropPath(MLP(LN(x)))
      → LayerNorm, mean over positions, linear head       (B, classes)

Window attention uses the shared `attend`, with bias = the window's relative position bias and
mask = the shifted-window mask (layers/window.py, layers/rel_pos.py). State-dict keys follow timm's,
so a timm Swin state dict loads with strict=True.

Image sizes. A stage whose feature map is no larger than the window attends over the whole map
(its window shrinks to the map, as in timm, and it does not shift). Otherwise the window must tile
the map exactly, and every patch merging needs an even map. So an image side s works when
P·2^(stages-1) divides s and each stage's map side is a multiple of its window: s is a multiple of
`SwinTransformer.size_step` (224 for patch 4, window 7, four stages at 224; 256 for window 8 at 256).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from ..layers.attention import AttentionBase
from ..layers.checks import take_indices
from ..layers.drop import DropPath, drop_path_rates
from ..layers.mlp import Mlp
from ..layers.patch_embed import ImageSizeError, PatchEmbed
from ..layers.rel_pos import add_relative_position_bias, gather_bias
from ..layers.window import (cyclic_shift, shifted_window_mask, window_attention_to_image, window_partition,
                             window_reverse)
from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register
from ._common import check_global_pool


@dataclass(frozen=True)
class SwinConfig:
    img_size: int | tuple[int, int] = 224       # input resolution the model is built for (sets the stage windows)
    patch_size: int = 4                         # P: each first-stage token is one P×P patch
    in_chans: int = 3                           # image channels
    num_classes: int = 1000                     # head outputs; 0 gives no head (features only)
    embed_dim: int = 96                         # D: width of stage 0; stage i is D·2^i wide
    depths: tuple[int, ...] = (2, 2, 6, 2)      # blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    window_size: int = 7                        # attention window side, in tokens, for every stage
    mlp_ratio: float = 4.0                      # MLP hidden width = mlp_ratio · stage width
    qkv_bias: bool = True                       # bias on the q, k, v projections
    global_pool: str = "avg"                    # 'avg' (mean over positions) | '' (no pooling; head per position)
    drop_rate: float = 0.0                      # dropout before the head
    proj_drop_rate: float = 0.0                 # dropout on MLP and attention-projection outputs
    attn_drop_rate: float = 0.0                 # dropout on attention weights
    drop_path_rate: float = 0.1                 # stochastic depth, rising linearly to this at the last block


# ---- attention and blocks ----------------------------------------------------------------------------------
class WindowAttention(AttentionBase):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    Keys as timm's: qkv, proj, relative_position_bias_table (the index buffer is not saved).
    With a recorder attached, records weights (B·nW, heads, N, N); SwinBlock.image_attention maps them
    onto the image.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.window_size = window
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        add_relative_position_bias(self, window, num_heads)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B·nW, N, C) windows; mask: bool (nW, N, N), True = may attend, or None → (B·nW, N, C)."""
        Bw, N, _ = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B·nW, H, N, hd)
        bias = gather_bias(self.relative_position_bias_table, self.relative_position_index)  # (H, N, N)
        if mask is not None:
            nW = mask.shape[0]
            mask = mask[None].expand(Bw // nW, -1, -1, -1).reshape(Bw, 1, N, N)  # window k of every image
        return self._attend(q, k, v, mask, bias, causal=False)


class SwinBlock(nn.Module):
    """One Swin block on a (B, H, W, C) map: window attention (shifted when `shift`), then the MLP."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], shift: tuple[int, int],
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.window_size = window
        self.shift_size = shift  # (0, 0) for a plain block
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def shift_for(self, H: int, W: int) -> tuple[int, int]:
        """The shift used on an H×W map: none along a side that one window already covers."""
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        return (sh if H > wh else 0, sw if W > ww else 0)

    def _window_attention(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H, W, C)."""
        B, H, W, C = x.shape
        shift = self.shift_for(H, W)
        shifted = any(shift)
        if shifted:
            x = cyclic_shift(x, shift)
        mask = shifted_window_mask(H, W, self.window_size, shift, device=x.device) if shifted else None
        windows = self.attn(window_partition(x, self.window_size), mask=mask)  # (B·nW, N, C)
        x = window_reverse(windows, self.window_size, H, W)  # (B, H, W, C)
        return cyclic_shift(x, (-shift[0], -shift[1])) if shifted else x

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H, W, C)."""
        x = x + self.drop_path1(self._window_attention(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def image_attention(self, weights: Tensor, grid: tuple[int, int]) -> Tensor:
        """Recorded weights (B·nW, heads, N, N) of a forward on an H×W map → (B, heads, H·W, H·W) on the map."""
        return window_attention_to_image(weights, grid, self.window_size, self.shift_for(*grid))


class PatchMerging(nn.Module):
    """(B, H, W, C) → (B, H/2, W/2, 2C): concatenate each 2×2 neighbourhood, LayerNorm, Linear (no bias).

    Channel order as Swin's release: [x(0,0), x(1,0), x(0,1), x(1,1)] for (row, column) offsets.
    """

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C)  # (B, H/2, dy, W/2, dx, C)
        x = x.permute(0, 1, 3, 4, 2, 5).flatten(3)  # (B, H/2, W/2, dx·dy·C): dy varies fastest
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Optional patch merging, then `depth` blocks alternating plain and shifted windows."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, window: tuple[int, int],
                 shift: tuple[int, int], downsample: bool, mlp_ratio: float, qkv_bias: bool,
                 proj_drop: float, attn_drop: float, drop_path: list[float]):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinBlock(out_dim, num_heads, window, (0, 0) if i % 2 == 0 else shift, mlp_ratio, qkv_bias,
                      proj_drop, attn_drop, drop_path[i])
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H/2, W/2, 2C) (or (B, H, W, C) in the first stage)."""
        return self.blocks(self.downsample(x))


class SwinPatchEmbed(PatchEmbed):
    """PatchEmbed followed by LayerNorm (keys `proj`, `norm` as timm's). (B, C, H, W) → (B, H/P, W/P, D)."""

    def __init__(self, img_size, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__(img_size, patch_size, in_chans, embed_dim, dynamic=True)  # the model checks sizes
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class ClassifierHead(nn.Module):
    """Dropout then Linear on a pooled feature; key `head.fc` as timm's."""

    def __init__(self, in_features: int, num_classes: int, drop: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


# ---- the model -----------------------------------------------------------------------------------------------
def stage_windows(grid: tuple[int, int], window: int, num_stages: int
                  ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(window, shift) of each stage for a patch grid, as timm sets them at build time: a stage whose map
    side is no larger than the window gets a window of the map's size and no shift on that side."""
    out = []
    for i in range(num_stages):
        res = (grid[0] // 2 ** i, grid[1] // 2 ** i)
        win = tuple(min(r, window) for r in res)
        shift = tuple(0 if r <= window else window // 2 for r in res)
        out.append((win, shift))
    return out


class SwinTransformer(nn.Module):
    def __init__(self, cfg: SwinConfig):
        super().__init__()
        if len(cfg.depths) != len(cfg.num_heads):
            raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} must name the same number of stages")
        check_global_pool(cfg.global_pool, ("avg", ""))
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        S = len(cfg.depths)
        dims = [cfg.embed_dim * 2 ** i for i in range(S)]
        self.embed_dim = cfg.embed_dim
        self.num_features = dims[-1]

        self.patch_embed = SwinPatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        grid = self.patch_embed.grid_size
        windows = stage_windows(grid, cfg.window_size, S)
        self.stage_window_sizes = [w for w, _ in windows]
        self.size_step = self._size_step(self.stage_window_sizes)  # (step_h, step_w)
        self._check_size(*self.patch_embed.img_size, when="built for")

        dpr = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        stages, start = [], 0
        for i in range(S):
            window, shift = windows[i]
            stages.append(SwinStage(dims[max(i - 1, 0)], dims[i], cfg.depths[i], cfg.num_heads[i], window, shift,
                                    downsample=i > 0, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                                    proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate,
                                    drop_path=dpr[start:start + cfg.depths[i]]))
            start += cfg.depths[i]
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        # One entry per tensor forward_intermediates returns: one per stage.
        self.feature_info = [{"num_chs": dims[i], "reduction": cfg.patch_size * 2 ** i, "module": f"layers.{i}"}
                             for i in range(S)]
        self.init_weights()

    def init_weights(self) -> None:
        """Linear layers: truncated normal, std 0.02, zero bias. Relative position bias tables: truncated normal,
        std 0.02. Patch projection (conv): PyTorch's default. LayerNorms: unit gain, zero bias. (As timm.)"""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases): the bias tables."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    # ---- image sizes ----------------------------------------------------------------------------------------
    def _size_step(self, windows: list[tuple[int, int]]) -> tuple[int, int]:
        """Image sides must be multiples of P · lcm(2^(S-1), 2^i · window_i over stages i)."""
        P = self.patch_embed.patch_size
        S = len(windows)
        steps = []
        for d in range(2):
            step = 2 ** (S - 1)
            for i, win in enumerate(windows):
                step = math.lcm(step, 2 ** i * win[d])
            steps.append(P[d] * step)
        return steps[0], steps[1]

    def _check_size(self, h: int, w: int, when: str = "given") -> None:
        sh, sw = self.size_step
        if h % sh or w % sw or h == 0 or w == 0:
            P = self.patch_embed.patch_size[0]
            wins = ", ".join(f"{a}×{b}" for a, b in self.stage_window_sizes)
            fit_h, fit_w = max(sh, round(h / sh) * sh), max(sw, round(w / sw) * sw)
            raise ImageSizeError(
                f"Swin was {when} a {h}×{w} image, but its windows cannot tile that. Each of its "
                f"{len(self.cfg.depths)} stages must be cut exactly into windows ({wins}) after "
                f"patch size {P} and a halving per stage, so image sides must be multiples of {sh}×{sw}; "
                f"resize to {fit_h}×{fit_w}, or build the model with another img_size or window_size")

    # ---- the common face ------------------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            self._check_size(*x.shape[-2:])
        return self.patch_embed(x)  # (B, H/P, W/P, D)

    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final normed map (B, h, w, C_last), [stage outputs (B, C_i, h_i, w_i)]).

        indices: stages to return (negative counts from the end); all stages by default. Stage outputs are
        channels-first, as timm's (feature maps for dense heads); the final map is channels-last, as
        forward_features.
        """
        wanted = take_indices(len(self.layers), indices, "stages", prefix="stage")
        x = self._embed(x)
        taken = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i in wanted:
                taken.append(x.permute(0, 3, 1, 2))  # (B, h, w, C) → (B, C, h, w)
        return self.norm(x), taken

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → final map (B, H/(P·2^(S-1)), W/(P·2^(S-1)), C_last), LayerNorm applied."""
        return self.norm(self.layers(self._embed(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """map (B, h, w, C) → logits (B, classes), or the pooled feature the head sees when pre_logits."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))  # (B, C)
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0: no head)."""
        if global_pool is not None:
            check_global_pool(global_pool, ("avg", ""))
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, self.cfg.drop_rate)
        if num_classes:
            nn.init.trunc_normal_(self.head.fc.weight, std=0.02)
            nn.init.zeros_(self.head.fc.bias)


# ---- variants ---------------------------------------------------------------------------------------------------
# name: (embed_dim, depths, num_heads), from the paper's Table 7 (Swin-T, -S, -B).
SWIN_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
# Smoke-test size: 64×64 images → 16, 8, 4, 2 token maps; window 2 shifts in the first three stages.
SWIN_TINY = dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)

for _size, (_dim, _depths, _heads) in SWIN_SIZES.items():
    register(ModelEntry(
        f"swin_{_size}_patch4_window7_224", "swin",
        SwinConfig(img_size=224, patch_size=4, window_size=7, embed_dim=_dim, depths=_depths, num_heads=_heads),
        SwinTransformer, mean=IMAGENET_MEAN, std=IMAGENET_STD, tiny=SWIN_TINY))
