"""DINO: self-distillation with no labels (Caron et al., 2021), as facebookresearch/dino builds it.

    student = ViT backbone ([CLS] feature) → DINOHead          trained by the optimiser, on every crop
    teacher = the same, an EMA of the student (no gradients)   sees the global crops only
    loss    = Σ over (teacher crop, other student crop) of  -softmax((t - center) / τ_t) · log_softmax(s / τ_s)

DINOHead: an MLP (Linear-GELU, nlayers - 1 times, then Linear to the bottleneck), L2 normalisation, and a
weight-normalised Linear without bias (`last_layer.weight_g`, `last_layer.weight_v`, as nn.utils.weight_norm
names them). With norm_last_layer the gains stay at 1 (frozen), so the last layer is a cosine similarity.

The backbone is a VisionTransformer with no head and dynamic image size (local crops are smaller than global
ones). After training, the teacher's backbone is the one to keep (`teacher.backbone.`): `vitkit train --init`
and `load_pretrained(path, VIT_NAME)` take it.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ModelEntry, register
from .vit import VisionTransformer, ViTConfig, vit_config


@dataclass(frozen=True)
class DINOConfig(ViTConfig):
    num_classes: int = 0                # the backbone has no classifier
    dynamic_img_size: bool = True       # global and local crops differ in size
    out_dim: int = 65536                # K: prototypes the head scores against
    hidden_dim: int = 2048              # the head's MLP width
    bottleneck_dim: int = 256           # the head's output before the last layer
    head_layers: int = 3                # Linear layers of the MLP
    norm_last_layer: bool = True        # last-layer gains fixed at 1
    # How the DINO objective trains it (facebookresearch/dino's defaults; saved with the run, set with --opt):
    global_crops_scale: tuple[float, float] = (0.4, 1.0)   # area share of the 2 global crops (at img_size)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)   # ... and of the local crops
    local_crops: int = 6                # local crops per image
    local_size: int | None = None       # their side; None: img_size · 96/224, rounded to whole patches
    student_temp: float = 0.1
    teacher_temp: float = 0.07          # reached after the warm-up ...
    warmup_teacher_temp: float = 0.04   # ... which starts here
    warmup_teacher_temp_frac: float = 0.3   # share of the training steps the warm-up lasts
    momentum_teacher: float = 0.996     # teacher EMA momentum at the start; a cosine takes it to 1
    center_momentum: float = 0.9
    freeze_last_layer_epochs: int = 1   # the last layer is not updated in the first epoch(s)


class WeightNormLinear(nn.Module):
    """y = x (g · v / ‖v‖)ᵀ per output row, no bias: nn.utils.weight_norm(nn.Linear(..., bias=False))."""

    def __init__(self, in_dim: int, out_dim: int, fixed_gain: bool):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_gain)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int = 3,
                 norm_last_layer: bool = True):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_gain=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINONet(nn.Module):
    """backbone ([CLS] feature (B, D)) → head ((B, K) scores)."""

    def __init__(self, cfg: DINOConfig):
        super().__init__()
        fields = {f.name for f in dataclasses.fields(ViTConfig)}
        self.backbone = VisionTransformer(ViTConfig(**{k: v for k, v in dataclasses.asdict(cfg).items()
                                                       if k in fields}))
        self.head = DINOHead(cfg.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers,
                             cfg.norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class DINO(nn.Module):
    backbone_prefix = "teacher.backbone."  # what fine-tuning keeps

    def __init__(self, cfg: DINOConfig):
        super().__init__()
        self.cfg = cfg
        self.student = DINONet(cfg)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    def no_weight_decay(self) -> set[str]:
        return {f"student.backbone.{n}" for n in self.student.backbone.no_weight_decay()}

    def forward(self, crops: list[Tensor], n_global: int = 2) -> tuple[Tensor, Tensor]:
        """crops: the views of a batch, global ones first, each (B, C, h, w) → (student scores (V·B, K) in view
        order, teacher scores (n_global·B, K))."""
        student = torch.cat([self.student(c) for c in crops])
        with torch.no_grad():
            teacher = torch.cat([self.teacher(c) for c in crops[:n_global]])
        return student, teacher

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m · teacher + (1 - m) · student, parameter by parameter."""
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.lerp_(s.detach(), 1.0 - momentum)

    @torch.no_grad()
    def update_center(self, batch_mean: Tensor, momentum: float) -> None:
        """center ← m · center + (1 - m) · mean of the teacher's scores over the (global) batch."""
        self.center.mul_(momentum).add_(batch_mean.reshape(1, -1), alpha=1.0 - momentum)


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, n_views: int, n_global: int,
              student_temp: float, teacher_temp: float) -> Tensor:
    """DINO's cross-entropy: every teacher (global) view against every student view but itself, averaged over
    the pairs and the batch. student: (n_views·B, K), teacher: (n_global·B, K), view-major."""
    s = F.log_softmax(student.float() / student_temp, dim=-1).chunk(n_views)
    t = F.softmax((teacher.float() - center) / teacher_temp, dim=-1).chunk(n_global)
    total, pairs = 0.0, 0
    for i, ti in enumerate(t):
        for j, sj in enumerate(s):
            if i == j:
                continue
            total = total + (-ti * sj).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def dino_config(vit_name: str, **overrides) -> DINOConfig:
    base = vit_config(vit_name)
    fields = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("num_classes", "dynamic_img_size")}
    return dataclasses.replace(DINOConfig(**fields), **overrides)


for _vit in ("vit_small_patch16_224", "vit_base_patch16_224", "vit_small_patch8_224", "vit_base_patch8_224"):
    register(ModelEntry(f"dino_{_vit}", "dino", dino_config(_vit), DINO, tags=("pretraining",)))
_SMALL_HEAD = dict(in_chans=1, out_dim=1024, hidden_dim=256, bottleneck_dim=64)
register(ModelEntry("dino_vit_pico_patch4_28", "dino", dino_config("vit_pico_patch4_28", **_SMALL_HEAD), DINO,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "mnist")))
register(ModelEntry("dino_vit_pico_patch2_8", "dino", dino_config("vit_pico_patch2_8", **_SMALL_HEAD), DINO,
                    mean=(0.5,), std=(0.5,), tags=("pretraining", "digits")))
