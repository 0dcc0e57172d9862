"""DeiT (Touvron et al., 2021): Data-efficient image Transformers and distillation through attention.

The plain DeiT models are ViTs trained another way: same architecture, ImageNet normalisation. The
distilled ones add one token and one head to the ViT:

    image (B, C, H, W)
      → patch embedding                                                    (B, Hp, Wp, D)
      → prepend [CLS] (+ registers) and the distillation token, add position embeddings   (B, 2 + Hp·Wp, D)
      → depth × pre-LN encoder block, LayerNorm                            (B, N, D)
      → head([CLS]) and head_dist([DIST])                                  2 × (B, classes)
      → their mean; or both, for a distillation loss while training

State-dict keys follow timm's (`dist_token`, `head_dist`), so a timm DeiT state dict loads with strict=True.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, register
from ._common import new_head
from .vit import VisionTransformer, ViTConfig, vit_config


class DistilledVisionTransformer(VisionTransformer):
    """A ViT with a distillation token after [CLS] (and any registers) and a second head that reads it.

    While training with `set_distilled_training(True)`, `forward` returns the pair (class logits,
    distillation logits), which the hard-distillation loss takes apart; this is timm's behaviour, kept so
    DeiT training recipes work unchanged. Otherwise (evaluation, or plain training) it returns their mean.
    """

    def __init__(self, cfg: ViTConfig):
        unsupported = {"global_pool": cfg.global_pool != "token", "head_hidden_size": bool(cfg.head_hidden_size),
                       "fc_norm": bool(cfg.fc_norm), "class_token": not cfg.class_token}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(f"a distilled DeiT reads its [CLS] and distillation tokens straight into two linear "
                             f"heads, so it cannot take {', '.join(f'{k}={getattr(cfg, k)!r}' for k in bad)}; "
                             f"drop the option(s), or use the plain deit_* model")
        super().__init__(cfg)
        self.distilled_training = False  # set_distilled_training(True) to get both heads' logits in training

    def _extra_prefix_tokens(self) -> int:
        return 1  # the distillation token

    def _build_extra_modules(self) -> None:
        D = self.embed_dim
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.head_dist = nn.Linear(D, self.num_classes) if self.num_classes else nn.Identity()

    @property
    def dist_index(self) -> int:
        """Position of the distillation token: the last prefix token, after [CLS] and any registers."""
        return self.num_prefix_tokens - 1

    def init_weights(self) -> None:
        """As the ViT's (see VisionTransformer.init_weights: both heads are Linear layers, truncated normal,
        std 0.02, zero bias), plus the distillation token: truncated normal, std 0.02 (as DeiT)."""
        super().init_weights()
        nn.init.trunc_normal_(self.dist_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (class logits, distillation logits) instead of their mean."""
        self.distilled_training = enable

    def _prefix_tokens(self, batch: int) -> list[Tensor]:
        return super()._prefix_tokens(batch) + [self.dist_token.expand(batch, -1, -1)]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, N, D) → the mean of head([CLS]) and head_dist([DIST]), (B, classes); or the pair of
        them while training with distillation; or, when pre_logits, the mean of the two tokens (B, D)."""
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, self.dist_index])  # each (B, D)
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace both heads with freshly initialised ones for `num_classes` (0: no heads)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"a distilled DeiT pools its [CLS] and distillation tokens, so global_pool must be "
                             f"'token' or None; got {global_pool!r}")
        super().reset_classifier(num_classes)
        self.head_dist = new_head(self.num_features, num_classes)


# ---- variants ---------------------------------------------------------------------------------------
# DeiT's sizes are the ViT's (tiny, small, base); the variant name says which and whether it is distilled.
TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)  # smoke-test size

for _size in ("tiny", "small", "base"):
    _cfg = vit_config(f"vit_{_size}_patch16_224")
    register(ModelEntry(f"deit_{_size}_patch16_224", "deit", _cfg, VisionTransformer,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, tiny=dict(TINY)))
    register(ModelEntry(f"deit_{_size}_distilled_patch16_224", "deit", _cfg, DistilledVisionTransformer,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, tags=("distilled",), tiny=dict(TINY)))
