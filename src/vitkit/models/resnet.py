"""ResNet (He et al., 2016), the torchvision / timm 'v1.5' form: the stride sits on the 3×3 conv.

    image (B, C, H, W)
      → stem: 7×7 conv stride 2, BN, ReLU, 3×3 max-pool stride 2            (B, 64, H/4, W/4)
      → 4 stages (layer1..layer4) of residual blocks, stride 2 from layer2 on
        basic:      x + BN(conv3×3(ReLU(BN(conv3×3(x)))))                   (ResNet-18/34)
        bottleneck: x + BN(conv1×1(ReLU(BN(conv3×3(ReLU(BN(conv1×1(x))))))))  (ResNet-50+; 4× wider out)
        each followed by ReLU; the shortcut is a 1×1 conv + BN where the shape changes
      → global average pool, linear head                                    (B, classes)

State-dict keys follow timm's (and torchvision's): conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, fc.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..layers import DropPath, drop_path_rates
from ..layers.checks import check_image, take_indices
from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN pairs with a ReLU between and after the sum. Output width = planes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop_path(self.bn2(self.conv2(x)))
        x += shortcut  # in place, as the ReLUs: no second full-size tensor per block
        return self.act2(x)


class Bottleneck(nn.Module):
    """1×1 (reduce) → 3×3 (stride here) → 1×1 (expand ×4), BN after each, ReLU between and after the sum."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.drop_path(self.bn3(self.conv3(x)))
        x += shortcut
        return self.act3(x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


@dataclass(frozen=True)
class ResNetConfig:
    img_size: int | tuple[int, int] = 224               # input size it is trained at (any size runs)
    in_chans: int = 3                                   # image channels
    num_classes: int = 1000                             # head outputs; 0 gives no head (features only)
    block: str = "bottleneck"                           # 'basic' (ResNet-18/34) | 'bottleneck' (ResNet-50 and up)
    layers: tuple[int, ...] = (3, 4, 6, 3)              # residual blocks per stage
    channels: tuple[int, ...] = (64, 128, 256, 512)     # block width per stage (a bottleneck outputs 4×)
    stem_width: int = 64                                # channels of the 7×7 stem conv
    zero_init_last: bool = True                         # zero the last BN gain of every block: each starts as identity
    drop_rate: float = 0.0                              # dropout before the classifier
    drop_path_rate: float = 0.0                         # stochastic depth, rising linearly to this at the last block


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {cfg.block!r}")
        if len(cfg.layers) != len(cfg.channels):
            raise ValueError(f"layers {cfg.layers} and channels {cfg.channels} must name the same number of stages")
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        block = BLOCKS[cfg.block]

        self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [{"num_chs": cfg.stem_width, "reduction": 2, "module": "act1"}]

        dprs = iter(drop_path_rates(cfg.drop_path_rate, sum(cfg.layers)))
        inplanes, reduction = cfg.stem_width, 4
        self.stage_names = []
        for i, (n, planes) in enumerate(zip(cfg.layers, cfg.channels)):
            stride = 1 if i == 0 else 2
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            blocks = [block(inplanes, planes, stride, downsample, drop_path=next(dprs))]
            blocks += [block(out, planes, drop_path=next(dprs)) for _ in range(n - 1)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            inplanes, reduction = out, reduction * stride
            self.feature_info.append({"num_chs": out, "reduction": reduction, "module": name})
        self.num_features = inplanes
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Convs: He normal (fan-out, for ReLU). BatchNorms: unit gain, zero bias; with zero_init_last the last
        BN of every block gets gain 0, so each residual branch starts switched off (Goyal et al., 2017). fc:
        PyTorch's default Linear init (uniform in ±1/√fan_in), as torchvision and timm leave it."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_last:  # after the loop above, which visits a block before its BNs
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm.weight)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (besides norms and biases): none."""
        return set()

    def stage_modules(self) -> list[nn.Module]:
        """layer1, layer2, ... in order."""
        return [getattr(self, n) for n in self.stage_names]

    # ---- the common face ------------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, stem_width, H/2, W/2), before the max-pool."""
        check_image(x, self.in_chans, like=self)
        return self.act1(self.bn1(self.conv1(x)))

    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) → (final map (B, C_last, H/32, W/32), [chosen features]).

        Features, as timm numbers them: 0 is the stem (after its ReLU, stride 2), 1..4 are layer1..layer4.
        indices: feature indices to return (negative counts from the end); all by default.
        """
        wanted = take_indices(len(self.feature_info), indices, what="features")
        x = self._stem(x)
        taken = [x] if 0 in wanted else []
        x = self.maxpool(x)
        for i, stage in enumerate(self.stage_modules(), start=1):
            x = stage(x)
            if i in wanted:
                taken.append(x)
        return x, taken

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → the last stage's map (B, C_last, H/32, W/32)."""
        x = self.maxpool(self._stem(x))
        for stage in self.stage_modules():
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """map (B, C_last, h, w) → logits (B, classes), or the pooled features (B, C_last) when pre_logits."""
        x = self.head_drop(x.mean(dim=(2, 3)))  # (B, C_last)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc with a freshly initialised Linear for `num_classes` (0: no head)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# ---- variants ---------------------------------------------------------------------------------------
# name: (block, blocks per stage), from the paper's Table 1.
RESNET_SIZES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# Smoke-test size. zero_init_last is off so that the gradient reaches every parameter from the first step
# (a zero gain blocks it to the layers before it in the branch, which is the point of the trick).
_TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8, img_size=64, zero_init_last=False)

for _name, (_block, _layers) in RESNET_SIZES.items():
    register(ModelEntry(_name, "resnet", ResNetConfig(block=_block, layers=_layers), ResNet,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, tiny=_TINY))

# A small-data CNN for MNIST: two basic-block stages (32, 64 channels) after a 32-channel stem, output stride 8
# (a 28×28 digit → a 4×4 map). The captioners' CNN encoder, and the CNN of the small-data comparisons. Two
# blocks need no zero-initialised last gain (a trick for deep ResNets), so every layer learns from the first step.
register(ModelEntry("resnet_pico_28", "resnet",
                    ResNetConfig(block="basic", layers=(1, 1), channels=(32, 64), stem_width=32, img_size=28,
                                 in_chans=1, num_classes=10, zero_init_last=False), ResNet, mean=(0.5,), std=(0.5,),
                    tags=("mnist",), tiny=dict(channels=(8, 16), stem_width=8)))
