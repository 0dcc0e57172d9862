"""CoAtNet (Dai et al., 2021) and MaxViT (Tu et al., 2022): convolution first, attention later.

    image (B, C, H, W)
      → stem: conv3×3 /2 → BN-act → conv3×3                                        (B, C0, H/2, W/2)
      → 4 stages; the first block of each halves the size                          (B, Ci, H/2^(i+2), W/2^(i+2))
          'C'  MBConv
          'T'  transformer block, attention over the whole map, relative position bias   (CoAtNet)
          'M'  MBConv → block attention (P×P windows) → grid attention (a P×P grid strided
               over the whole map), each with a relative position bias                   (MaxViT)
      → LayerNorm, global average pool, [LayerNorm → Linear + tanh], Linear head    (B, classes)

The two families share everything but the attention blocks, as in timm's maxxvit.py; state-dict
keys follow timm's, so a timm state dict loads with strict=True. Only what the registered variants
use is implemented (timm's rw CoAtNets, the TF-ported MaxViTs).
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from ..layers.attention import Attention, AttentionBase, attend
from ..layers.checks import check_image, take_indices
from ..layers.conv import ConvMlp, LayerNorm2d
from ..layers.drop import DropPath, drop_path_rates
from ..layers.mbconv import BatchNormAct2d, Downsample2d, MbConv, act_layer, conv2d
from ..layers.mlp import Mlp
from ..layers.patch_embed import ImageSizeError, to_2tuple
from ..layers.rel_pos import RelativePositionBias
from ..layers.rel_pos_tf import RelPosBiasTf
from ..layers.window import window_partition, window_reverse
from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register


@dataclass(frozen=True)
class MaxxVitConfig:
    img_size: int | tuple[int, int] = 224        # input resolution the model is built for
    in_chans: int = 3                            # image channels
    num_classes: int = 1000                      # head outputs; 0 gives no head (features only)
    embed_dim: tuple[int, ...] = (96, 192, 384, 768)     # width of each stage
    depths: tuple[int, ...] = (2, 3, 5, 2)               # blocks in each stage
    block_type: tuple[str, ...] = ("C", "C", "T", "T")   # per stage: 'C' MBConv | 'T' transformer | 'M' MaxViT
    stem_width: int | tuple[int, int] = 64       # widths of the stem's two convs
    stem_bias: bool = False                      # bias on the stem convs
    padding: str = ""                            # '' symmetric (PyTorch) | 'same' (TensorFlow: extra pixel bottom/right)
    conv_stride_mode: str = "dw"                 # MBConv downsampling: 'dw' strided depthwise conv | 'pool' 2×2 avg pool
    conv_expand_ratio: float = 4.0               # MBConv expanded width / base width
    conv_expand_output: bool = True              # MBConv base width is the output width (True) or the input width
    conv_pre_norm_act: bool = False              # activation after the MBConv pre-norm
    conv_output_bias: bool = True                # bias on the MBConv output conv and its shortcut projection
    conv_se_early: bool = False                  # squeeze-excite right after the depthwise conv, before its norm
    conv_se_ratio: float = 0.25                  # squeeze-excite bottleneck / base width
    conv_se_act: str = "silu"                    # squeeze-excite bottleneck activation
    conv_act: str = "gelu"                       # stem and MBConv activation: 'relu' | 'silu' | 'gelu' | 'gelu_tanh'
    conv_norm_eps: float = 1e-5                  # BatchNorm epsilon (stem, MBConv)
    dim_head: int = 32                           # width of one attention head; heads = width // dim_head
    mlp_ratio: float = 4.0                       # transformer MLP hidden width / block width
    attn_act: str = "gelu"                       # transformer MLP activation
    attn_norm_eps: float = 1e-6                  # LayerNorm epsilon (attention blocks, final norm, head)
    shortcut_bias: bool = True                   # bias on the projection of a downsampling 'T' block's shortcut
    window_size: int | tuple[int, int] | None = None  # 'M' blocks' window and grid size P; None: img_size // 32
    head_hidden_size: int | None = None          # pre-logits Linear + tanh after a LayerNorm (MaxViT), or None
    drop_rate: float = 0.0                       # dropout before the head
    drop_path_rate: float = 0.0                  # stochastic depth, rising linearly to this at the last block


# ---- block and grid partitions --------------------------------------------------------------------------
# Both cut a channels-last map (B, H, W, C) into groups of P = ph·pw tokens that attend to each other,
# and differ only in which pixels share a group (nh = H/ph, nw = W/pw groups a side):
#   block  B (nh ph) (nw pw) C -> (B nh nw) (ph pw) C   contiguous ph×pw windows: Swin's window partition
#   grid   B (ph nh) (pw nw) C -> (B nh nw) (ph pw) C   a ph×pw grid with stride (nh, nw) over the whole map
block_partition, block_reverse = window_partition, window_reverse


def grid_partition(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """x: (B, H, W, C) → (B·nh·nw, ph·pw, C). Token (i, j) of group (a, b) is pixel (i·nh + a, j·nw + b)."""
    B, H, W, C = x.shape
    ph, pw = grid
    if H % ph or W % pw:
        raise ImageSizeError(f"a {H}×{W} feature map cannot be cut into a {ph}×{pw} grid; "
                             f"its height and width must be multiples of {ph} and {pw}")
    x = x.view(B, ph, H // ph, pw, W // pw, C).permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, ph, pw, C)
    return x.reshape(-1, ph * pw, C)


def grid_reverse(groups: Tensor, grid: tuple[int, int], H: int, W: int) -> Tensor:
    """groups: (B·nh·nw, ph·pw, C) → (B, H, W, C); the inverse of grid_partition."""
    (ph, pw), C = grid, groups.shape[-1]
    x = groups.view(-1, H // ph, W // pw, ph, pw, C).permute(0, 3, 1, 4, 2, 5)  # (B, ph, nh, pw, nw, C)
    return x.reshape(-1, H, W, C)


PARTITIONS = {"block": (block_partition, block_reverse), "grid": (grid_partition, grid_reverse)}


# ---- attention ----------------------------------------------------------------------------------------------
class Attention2d(AttentionBase):
    """Self-attention over every position of a (B, C, H, W) map, plus a relative position bias for an
    H×W window (CoAtNet). Projections are 1×1 convs; qkv channels are head-first, (heads, 3·hd), and the
    output projection may widen C → dim_out. Keys and shapes as timm's Attention2d."""

    def __init__(self, dim: int, dim_out: int, feat_size: tuple[int, int], dim_head: int = 32):
        if dim % dim_head:
            raise ValueError(f"width {dim} is not a multiple of dim_head {dim_head}; pick a dim_head that divides it")
        super().__init__(dim, dim // dim_head, attn_drop=0.0, proj_drop=0.0)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.rel_pos = RelativePositionBias(feat_size, self.num_heads)
        self.proj = nn.Conv2d(dim, dim_out, 1)  # replaces the base's Linear: a 1×1 conv, as timm

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, dim_out, H, W)."""
        B, _, H, W = x.shape
        qkv = self.qkv(x).view(B, self.num_heads, 3 * self.head_dim, H * W).transpose(-1, -2)  # (B, nh, N, 3·hd)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, nh, N, hd)
        res = attend(q, k, v, bias=self.rel_pos(), scale=self.scale, need_weights=self.recorder is not None,
                     dropout_p=self.attn_drop if self.training else 0.0)
        if self.recorder is not None:
            self.recorder.record(self.name, res.weights)
        x = res.out.transpose(-1, -2).reshape(B, -1, H, W)  # (B, nh, hd, N) → (B, nh·hd, H, W)
        return self.proj_drop(self.proj(x))


class RelPosAttention(Attention):
    """Self-attention over (B', N, C) tokens of a P×P group with MaxViT's relative position bias.
    qkv channels interleaved (3, heads, hd), as layers.Attention and timm's TF-ported AttentionCl."""

    def __init__(self, dim: int, window: tuple[int, int], dim_head: int = 32):
        if dim % dim_head:
            raise ValueError(f"width {dim} is not a multiple of dim_head {dim_head}; pick a dim_head that divides it")
        super().__init__(dim, dim // dim_head)
        self.rel_pos = RelPosBiasTf(window, self.num_heads)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B', P, C) → (B', P, C)."""
        return super().forward(x, bias=self.rel_pos())


# ---- blocks --------------------------------------------------------------------------------------------------
class TransformerBlock2d(nn.Module):
    """CoAtNet's 'T' block on a (B, C, H, W) map: x + Attn(LN(x)), then x + MLP(LN(x)). A downsampling
    block pools both branches by 2×2 and widens its shortcut with a 1×1 conv; attention runs at the
    input width and its output projection widens to dim_out."""

    def __init__(self, dim: int, dim_out: int, stride: int, feat_size: tuple[int, int], cfg: MaxxVitConfig,
                 drop_path: float = 0.0):
        super().__init__()
        norm = LayerNorm2d(dim, eps=cfg.attn_norm_eps)
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out, bias=cfg.shortcut_bias, padding=cfg.padding)
            self.norm1 = nn.Sequential(OrderedDict(norm=norm, down=Downsample2d(dim, dim, padding=cfg.padding)))
        else:
            self.shortcut = nn.Identity()
            self.norm1 = norm
        self.attn = Attention2d(dim, dim_out, feat_size, cfg.dim_head)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim_out, eps=cfg.attn_norm_eps)
        self.mlp = ConvMlp(dim_out, int(dim_out * cfg.mlp_ratio), act_layer=act_layer(cfg.attn_act))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.shortcut(x) + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PartitionBlock(nn.Module):
    """MaxViT's block- or grid-attention layer on a channels-last map (B, H, W, C): partition, attend
    within each group of P×P tokens, undo the partition; then the MLP. The two kinds differ only in
    the partition function."""

    def __init__(self, dim: int, partition: str, window: tuple[int, int], cfg: MaxxVitConfig, drop_path: float = 0.0):
        super().__init__()
        self.partition, self.reverse = PARTITIONS[partition]
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=cfg.attn_norm_eps)
        self.attn = RelPosAttention(dim, window, cfg.dim_head)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.attn_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=act_layer(cfg.attn_act))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _partition_attn(self, x: Tensor) -> Tensor:
        groups = self.attn(self.partition(x, self.window))  # (B·groups, P, C)
        return self.reverse(groups, self.window, *x.shape[1:3])  # (B, H, W, C)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self._partition_attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _mbconv(dim: int, dim_out: int, stride: int, cfg: MaxxVitConfig, drop_path: float) -> MbConv:
    return MbConv(dim, dim_out, stride, expand_ratio=cfg.conv_expand_ratio, expand_output=cfg.conv_expand_output,
                  stride_mode=cfg.conv_stride_mode, pre_norm_act=cfg.conv_pre_norm_act,
                  output_bias=cfg.conv_output_bias, se_ratio=cfg.conv_se_ratio, se_early=cfg.conv_se_early,
                  se_act=cfg.conv_se_act, act=cfg.conv_act, norm_eps=cfg.conv_norm_eps, padding=cfg.padding,
                  drop_path=drop_path)


class MaxVitBlock(nn.Module):
    """MBConv, then block attention, then grid attention: (B, C, H, W) → (B, C_out, H/s, W/s)."""

    def __init__(self, dim: int, dim_out: int, stride: int, window: tuple[int, int], cfg: MaxxVitConfig,
                 drop_path: float = 0.0):
        super().__init__()
        self.conv = _mbconv(dim, dim_out, stride, cfg, drop_path)
        self.attn_block = PartitionBlock(dim_out, "block", window, cfg, drop_path)
        self.attn_grid = PartitionBlock(dim_out, "grid", window, cfg, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)  # (B, C, H, W)


class Stem(nn.Module):
    """conv3×3 /2 → BN-act → conv3×3: (B, C_in, H, W) → (B, C0, ⌈H/2⌉, ⌈W/2⌉)."""

    def __init__(self, in_chans: int, cfg: MaxxVitConfig):
        super().__init__()
        w1, w2 = to_2tuple(cfg.stem_width)
        self.conv1 = conv2d(in_chans, w1, 3, stride=2, bias=cfg.stem_bias, padding=cfg.padding)
        self.norm1 = BatchNormAct2d(w1, eps=cfg.conv_norm_eps, act=cfg.conv_act)
        self.conv2 = conv2d(w1, w2, 3, bias=cfg.stem_bias, padding=cfg.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class Stage(nn.Module):
    """The blocks of one stage, under timm's key `stages.i.blocks.j`."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class Head(nn.Module):
    """(B, C, H, W) → mean over H, W → [LayerNorm → Linear + tanh] → dropout → Linear → (B, classes).
    Keys as timm's ClassifierHead (`fc`) or, with a hidden size, NormMlpClassifierHead (`norm`, `pre_logits.fc`)."""

    def __init__(self, dim: int, num_classes: int, hidden_size: int | None, norm_eps: float, drop_rate: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if hidden_size else None
        if hidden_size:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(dim, hidden_size), act=nn.Tanh()))
        else:
            self.pre_logits = nn.Identity()
        self.num_features = hidden_size or dim
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # (B, C)
        if self.norm is not None:
            x = self.norm(x)
        x = self.drop(self.pre_logits(x))
        return x if pre_logits else self.fc(x)


# ---- which input sizes work ----------------------------------------------------------------------------------
# Each axis on its own: the stem and every stage halve it, 'M' stages need multiples of the window,
# 'T' stages need the very size their position bias was built for.
def window_of(cfg: MaxxVitConfig) -> tuple[int, int]:
    """The MaxViT block/grid partition size: cfg.window_size, or img_size // 32."""
    return to_2tuple(cfg.window_size) if cfg.window_size else tuple(s // 32 for s in to_2tuple(cfg.img_size))


def _axis_sizes(cfg: MaxxVitConfig, n: int) -> list[int] | None:
    """Lengths along one axis after the stem and after each stage, or None where a stage would halve an odd
    length (only 'same' padding rounds up on every path; with symmetric padding the pools would floor)."""
    sizes = [-(-n // 2)]
    for _ in cfg.embed_dim:
        if sizes[-1] % 2 and cfg.padding != "same":
            return None
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def _axis_problem(cfg: MaxxVitConfig, n: int, axis: int, built: bool) -> str | None:
    side = "width" if axis else "height"
    sizes = _axis_sizes(cfg, n)
    if sizes is None:
        return f"a stage would have to halve an odd {side}"
    window, built_sizes = window_of(cfg)[axis], _axis_sizes(cfg, to_2tuple(cfg.img_size)[axis])
    for i, kind in enumerate(cfg.block_type):
        s = sizes[i + 1]
        if kind == "M" and s % window:
            return f"stage {i}'s feature {side} {s} is not a multiple of the partition size {window}"
        if kind == "T" and built and s != built_sizes[i + 1]:
            return (f"stage {i}'s feature {side} would be {s}, but its relative position bias "
                    f"is built for {built_sizes[i + 1]}")
    return None


def size_problem(cfg: MaxxVitConfig, h: int, w: int, built: bool = True) -> str | None:
    """Why an h×w image does not suit a model with this config, or None if it does. built=False asks
    whether a model could be built for h×w instead (no fixed position-bias sizes)."""
    return _axis_problem(cfg, h, 0, built) or _axis_problem(cfg, w, 1, built)


def sizes_near(cfg: MaxxVitConfig, h: int, w: int, built: bool = True) -> str:
    """The runs of working sizes nearest to h and w (two below, two above, within ±512), for errors."""
    def near(n: int, axis: int) -> str:
        runs: list[list[int]] = []
        for m in range(max(1, n - 512), n + 513):
            c = cfg if built else dataclasses.replace(cfg, img_size=(m, m))  # a model built for m (windows follow)
            if (not built and min(window_of(c)) < 1) or _axis_problem(c, m, axis, built):
                continue
            if runs and runs[-1][1] == m - 1:
                runs[-1][1] = m
            else:
                runs.append([m, m])
        runs = [r for r in runs if r[0] <= n][-2:] + [r for r in runs if r[0] > n][:2]
        return ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in runs) or "none within 512 pixels"
    return f"heights {near(h, 0)}; widths {near(w, 1)}"


# ---- the model --------------------------------------------------------------------------------------------------
class MaxxVit(nn.Module):
    """CoAtNet or MaxViT, by the config's block types."""

    def __init__(self, cfg: MaxxVitConfig):
        super().__init__()
        n = len(cfg.embed_dim)
        if not (len(cfg.depths) == len(cfg.block_type) == n):
            raise ValueError(f"embed_dim, depths and block_type need one entry per stage; got {n}, "
                             f"{len(cfg.depths)} and {len(cfg.block_type)}")
        bad = sorted(set(cfg.block_type) - {"C", "T", "M"})
        if bad:
            raise ValueError(f"block types {bad} are unknown; use 'C' (MBConv), 'T' (transformer) or 'M' (MaxViT)")
        self.cfg = cfg
        self.img_size = to_2tuple(cfg.img_size)
        self.window_size = window_of(cfg)
        if "M" in cfg.block_type and min(self.window_size) < 1:
            raise ValueError(f"img_size {self.img_size} gives no window (img_size // 32); build for 32 pixels or "
                             f"more, or pass window_size")
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim[-1]
        problem = size_problem(cfg, *self.img_size, built=False)
        if problem:
            raise ValueError(f"img_size {self.img_size[0]}×{self.img_size[1]} does not suit this model: {problem}; "
                             f"sizes that do: {sizes_near(cfg, *self.img_size, built=False)}")
        feat_sizes = list(zip(_axis_sizes(cfg, self.img_size[0]), _axis_sizes(cfg, self.img_size[1])))

        self.stem = Stem(cfg.in_chans, cfg)
        dim = to_2tuple(cfg.stem_width)[1]
        self.feature_info = [{"num_chs": dim, "reduction": 2, "module": "stem"}]
        rates = iter(drop_path_rates(cfg.drop_path_rate, sum(cfg.depths)))
        stages = []
        for i, (dim_out, depth, kind) in enumerate(zip(cfg.embed_dim, cfg.depths, cfg.block_type)):
            blocks = []
            for j in range(depth):
                d_in, stride, dpr = (dim if j == 0 else dim_out), (2 if j == 0 else 1), next(rates)
                if kind == "C":
                    blocks.append(_mbconv(d_in, dim_out, stride, cfg, dpr))
                elif kind == "T":
                    blocks.append(TransformerBlock2d(d_in, dim_out, stride, feat_sizes[i + 1], cfg, dpr))
                else:
                    blocks.append(MaxVitBlock(d_in, dim_out, stride, self.window_size, cfg, dpr))
            stages.append(Stage(blocks))
            dim = dim_out
            self.feature_info.append({"num_chs": dim, "reduction": 2 ** (i + 2), "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)

        if cfg.head_hidden_size:  # the head normalises after pooling
            self.norm = nn.Identity()
        else:
            self.norm = LayerNorm2d(dim, eps=cfg.attn_norm_eps)
        self.head = Head(dim, cfg.num_classes, cfg.head_hidden_size, cfg.attn_norm_eps, cfg.drop_rate)
        self.num_features = self.head.num_features
        self.init_weights()

    def init_weights(self) -> None:
        """As timm's 'vit_eff' scheme. Convs of the stem and MBConvs (squeeze-excite included): normal with
        std √(2 / fan_out), fan_out = k·k·C_out / groups, zero bias (EfficientNet). Linear and conv layers of
        the attention blocks: Xavier uniform, MLP biases normal with std 1e-6, other biases zero (ViT).
        Relative position tables: normal, std 0.02 (truncated at ±2σ for the Swin-style ones). Norms: unit
        gain, zero bias. Head: PyTorch's default Linear init, as timm leaves it."""
        for m in self.modules():
            if isinstance(m, (TransformerBlock2d, PartitionBlock)):
                for name, sub in m.named_modules():
                    if isinstance(sub, (nn.Conv2d, nn.Linear)):
                        nn.init.xavier_uniform_(sub.weight)
                        if sub.bias is not None and "mlp" in name:
                            nn.init.normal_(sub.bias, std=1e-6)
                        elif sub.bias is not None:
                            nn.init.zeros_(sub.bias)
            elif isinstance(m, (MbConv, Stem)):
                for sub in m.modules():
                    if isinstance(sub, nn.Conv2d):
                        fan_out = sub.kernel_size[0] * sub.kernel_size[1] * sub.out_channels // sub.groups
                        nn.init.normal_(sub.weight, std=math.sqrt(2.0 / fan_out))
                        if sub.bias is not None:
                            nn.init.zeros_(sub.bias)
            elif isinstance(m, RelativePositionBias):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02, a=-0.04, b=0.04)
            elif isinstance(m, RelPosBiasTf):
                nn.init.normal_(m.relative_position_bias_table, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases): the position tables."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def check_input(self, x: Tensor) -> None:
        check_image(x, self.cfg.in_chans, like=self)
        h, w = x.shape[-2:]
        problem = size_problem(self.cfg, h, w)
        if problem:
            rebuilt = dataclasses.replace(self.cfg, img_size=(h, w))
            rebuild = (f", or create the model with img_size=({h}, {w})"
                       if min(window_of(rebuilt)) >= 1 and not size_problem(rebuilt, h, w, built=False) else "")
            raise ImageSizeError(f"image is {h}×{w} but {problem}. Sizes this model takes near it: "
                                 f"{sizes_near(self.cfg, h, w)}. Resize the images{rebuild}")

    # ---- the common face ------------------------------------------------------------------------------------
    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final normed map (B, C4, H/32, W/32), [maps (B, Ci, H/2^(i+1), W/2^(i+1)) of the
        chosen stages]). Index 0 is the stem, 1..4 the stages (as timm); negative indices count from the end."""
        wanted = take_indices(len(self.stages) + 1, indices, "feature levels")
        self.check_input(x)
        x = self.stem(x)
        taken = [x] if 0 in wanted else []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in wanted:
                taken.append(x)
        return self.norm(x), taken

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C4, H/32, W/32), final norm applied."""
        self.check_input(x)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C4, h, w) → logits (B, classes), or the features the classifier sees when pre_logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` (0: no classifier)."""
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# ---- variants ------------------------------------------------------------------------------------------------------
_CONV_C = ("C", "C", "T", "T")
_RW_COAT = dict(  # timm's own CoAtNets, trained before the official code was out
    stem_width=(32, 64), conv_stride_mode="pool", conv_pre_norm_act=True, conv_expand_output=False,
    conv_output_bias=False, conv_se_early=True, conv_se_act="relu", conv_act="silu", shortcut_bias=False)
_TF_MAXVIT = dict(  # ported from the TensorFlow release
    block_type=("M",) * 4, stem_width=64, stem_bias=True, padding="same", conv_norm_eps=1e-3,
    conv_act="gelu_tanh", attn_act="gelu_tanh", attn_norm_eps=1e-5)

VARIANTS = {
    "coatnet_0_rw_224": MaxxVitConfig(embed_dim=(96, 192, 384, 768), depths=(2, 3, 7, 2), block_type=_CONV_C,
                                      **_RW_COAT),
    "coatnet_nano_rw_224": MaxxVitConfig(embed_dim=(64, 128, 256, 512), depths=(3, 4, 6, 3), block_type=_CONV_C,
                                         stem_width=(32, 64), conv_stride_mode="pool", conv_expand_output=False,
                                         conv_act="silu"),
    "maxvit_tiny_tf_224": MaxxVitConfig(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), head_hidden_size=512,
                                        **_TF_MAXVIT),
}
# Smoke-test sizes: about 0.1M parameters, 64×64 images (the last stage sees 2×2).
_TINY = dict(img_size=64, embed_dim=(16, 16, 32, 32), depths=(1, 1, 1, 1), dim_head=8)
TINY = {
    "coatnet": dict(_TINY, stem_width=(8, 16)),
    "maxvit": dict(_TINY, stem_width=16, head_hidden_size=32),
}


def maxxvit_config(name: str, **overrides) -> MaxxVitConfig:
    """The config of a registered CoAtNet / MaxViT name, with overrides."""
    if name not in VARIANTS:
        raise ValueError(f"unknown CoAtNet/MaxViT variant {name!r}; known: {', '.join(VARIANTS)}")
    return dataclasses.replace(VARIANTS[name], **overrides)


# Normalisation the weights expect, as timm's pretrained configs: timm's rw weights use [-1, 1].
_IMAGENET_NORM = {"maxvit_tiny_tf_224"}

for _name, _cfg in VARIANTS.items():
    _family = _name.split("_")[0]
    _norm = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD) if _name in _IMAGENET_NORM else {}
    register(ModelEntry(_name, _family, _cfg, MaxxVit, tiny=TINY[_family], **_norm))
