"""ConvNeXt (Liu et al., 2022): a ResNet modernised step by step towards the Swin Transformer.

    image (B, C, H, W)
      → stem: P×P conv, stride P (a patch embedding), LayerNorm            (B, d0, H/P, W/P)
      → 4 stages; each but the first opens with LayerNorm + 2×2 conv, stride 2 (downsample)
        block: x + DropPath(γ · MLP(LN(depthwise 7×7 conv(x))))            (B, d_i, H/(P·2^i), W/(P·2^i))
      → global average pool, LayerNorm, linear head                       (B, classes)

The block's MLP runs either on (B, H, W, C) with Linear layers (conv_mlp=False, the paper's form) or on
(B, C, H, W) with 1×1 convolutions (conv_mlp=True, faster for the small timm variants); the two compute the
same function and differ only in weight shapes. State-dict keys follow timm's.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..layers import DropPath, LayerNorm6, Mlp, drop_path_rates, layer_scale, layer_scale_gain
from ..layers.checks import check_image, take_indices
from ..layers.conv import ConvMlp, LayerNorm2d
from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register
from ._common import new_head


class ConvNeXtBlock(nn.Module):
    """x: (B, C, H, W) → x + DropPath(γ · MLP(LN(dwconv(x)))). Keys `conv_dw`, `norm`, `mlp.fc1/fc2`, `gamma`."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, conv_mlp: bool = False,
                 ls_init_value: float | None = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim) if conv_mlp else LayerNorm6(dim)
        hidden = int(mlp_ratio * dim)
        self.mlp = ConvMlp(dim, hidden) if conv_mlp else Mlp(dim, hidden)
        # LayerScale's gain, held on the block as timm does so the key is `gamma` (not `ls.gamma`).
        self.gamma = layer_scale_gain(dim, ls_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x)
        if self.conv_mlp:
            y = self.mlp(self.norm(y))
        else:
            y = y.permute(0, 2, 3, 1)  # (B, H, W, C)
            y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + self.drop_path(layer_scale(y, self.gamma, channel_dim=1))


class ConvNeXtStage(nn.Module):
    """Downsample (LayerNorm + k×k conv, stride k) when the width or resolution changes, then one block per
    drop-path rate in `dprs`."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, dprs: list[float], **block_args):
        super().__init__()
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, stride, stride=stride))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, drop_path=dpr, **block_args) for dpr in dprs])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class NormClassifierHead(nn.Module):
    """(B, C, H, W) → mean over H, W → LayerNorm → dropout → Linear. Keys `norm`, `fc` as timm's."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.norm = LayerNorm6(dim)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(self.norm(x.mean(dim=(2, 3))))  # (B, C)
        return x if pre_logits else self.fc(x)


@dataclass(frozen=True)
class ConvNeXtConfig:
    img_size: int | tuple[int, int] = 224         # input size it is trained at (any size ≥ 32 runs)
    in_chans: int = 3                             # image channels
    num_classes: int = 1000                       # head outputs; 0 gives no head (features only)
    depths: tuple[int, ...] = (3, 3, 9, 3)        # blocks per stage
    dims: tuple[int, ...] = (96, 192, 384, 768)   # channels per stage
    patch_size: int = 4                           # the stem is a patch_size × patch_size conv with that stride
    kernel_size: int = 7                          # depthwise conv kernel in every block
    mlp_ratio: float = 4.0                        # MLP hidden width = mlp_ratio · channels
    conv_mlp: bool = False                        # MLP as 1×1 convs on (B, C, H, W) rather than Linear on (B, H, W, C)
    ls_init_value: float | None = 1e-6            # initial per-channel gain γ on each block's branch; None: no γ
    drop_rate: float = 0.0                        # dropout before the classifier
    drop_path_rate: float = 0.0                   # stochastic depth, rising linearly to this at the last block


class ConvNeXt(nn.Module):
    def __init__(self, cfg: ConvNeXtConfig):
        super().__init__()
        if len(cfg.depths) != len(cfg.dims):
            raise ValueError(f"depths {cfg.depths} and dims {cfg.dims} must name the same number of stages")
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dims[-1]
        # the smallest input every downsampling conv still has a window for: the stride of the last stage
        self.min_img_size = cfg.patch_size * 2 ** (len(cfg.dims) - 1)

        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.dims[0], cfg.patch_size, stride=cfg.patch_size),
                                  LayerNorm2d(cfg.dims[0]))
        dprs = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        block_args = dict(kernel_size=cfg.kernel_size, mlp_ratio=cfg.mlp_ratio, conv_mlp=cfg.conv_mlp,
                          ls_init_value=cfg.ls_init_value)
        stages, prev, start, reduction = [], cfg.dims[0], 0, cfg.patch_size
        self.feature_info = []
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            stages.append(ConvNeXtStage(prev, dim, stride, dprs[start:start + depth], **block_args))
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.head = NormClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self.init_weights()

    def init_weights(self) -> None:
        """Every conv and Linear weight (stem, depthwise, MLP, downsample, head): truncated normal, std 0.02, zero
        bias. LayerNorms: unit gain, zero bias. Block gains γ: ls_init_value (1e-6), so each block starts close
        to the identity."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, ConvNeXtBlock) and m.gamma is not None:
                nn.init.constant_(m.gamma, self.cfg.ls_init_value)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases): none."""
        return set()

    # ---- the common face ------------------------------------------------------------------------
    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final map (B, d_last, h, w), [map (B, d_i, h_i, w_i) after each chosen stage]).

        indices: stage indices to return (negative counts from the end); all stages by default.
        """
        wanted = take_indices(len(self.stages), indices)
        check_image(x, self.in_chans, self.min_img_size, like=self)
        x = self.stem(x)
        taken = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                taken.append(x)
        return x, taken

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → the last stage's map (B, d_last, H/32, W/32)."""
        check_image(x, self.in_chans, self.min_img_size, like=self)
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """map (B, d_last, h, w) → logits (B, classes), or the normed pooled features when pre_logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear with a freshly initialised one for `num_classes` (0: no head)."""
        self.num_classes = num_classes
        self.head.fc = new_head(self.num_features, num_classes)


# ---- variants ---------------------------------------------------------------------------------------
# name: (depths, dims, conv_mlp). 'atto' is timm's own small variant (3.7M parameters).
CONVNEXT_SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320), True),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768), False),
}
_TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), img_size=32)  # smoke-test size

for _size, (_depths, _dims, _conv_mlp) in CONVNEXT_SIZES.items():
    register(ModelEntry(f"convnext_{_size}", "convnext", ConvNeXtConfig(depths=_depths, dims=_dims, conv_mlp=_conv_mlp),
                        ConvNeXt, mean=IMAGENET_MEAN, std=IMAGENET_STD, tiny=_TINY))
