"""Knowledge distillation as DeiT does it (Touvron et al., 2021, §5): a frozen teacher, any vitkit checkpoint
(a CNN included), and a student that learns from the labels and from the teacher.

    loss = (1 - α) · label loss(student) + α · distillation loss(student, teacher)
    soft:  KL(softmax(teacher / τ) ‖ softmax(student / τ)) · τ², averaged over the batch
    hard:  cross-entropy(student, argmax teacher)

A distilled DeiT trains its class head on the labels and its distillation head on the teacher, and predicts
with their mean (timm's and DeiT's behaviour). Any other student distils through its one head. (DeiT's own
code divides the soft loss by batch × classes rather than by the batch; the formula here is the paper's.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..weights import load_checkpoint
from .classify import Classify, evaluate
from .objective import register_objective


def soft_distillation(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """KL(teacher/τ ‖ student/τ) · τ², mean over the batch. student, teacher: (B, K) logits."""
    return F.kl_div(F.log_softmax(student.float() / tau, dim=-1), F.log_softmax(teacher.float() / tau, dim=-1),
                    reduction="batchmean", log_target=True) * tau * tau


class Renormalised(nn.Module):
    """The teacher, fed the student's inputs: normalised with the student's mean/std, re-normalised to the
    teacher's own (the identity when they agree)."""

    def __init__(self, model: nn.Module, student: dict, teacher: dict):
        super().__init__()
        self.model = model
        mean_s, std_s = (torch.tensor(student[k]).view(-1, 1, 1) for k in ("mean", "std"))
        mean_t, std_t = (torch.tensor(teacher.get(k, student[k])).view(-1, 1, 1) for k in ("mean", "std"))
        self.register_buffer("scale", std_s / std_t, persistent=False)               # (C, 1, 1)
        self.register_buffer("shift", (mean_s - mean_t) / std_t, persistent=False)   # (C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale + self.shift)


@register_objective
class Distill(Classify):
    name = "distill"

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        ckpt = load_checkpoint(cfg.teacher)  # a clear error for a missing or non-vitkit file
        r, t = self.record, ckpt.data
        if ckpt.classes and ckpt.classes != r["classes"]:
            raise ValueError(f"the teacher {cfg.teacher} was trained on classes {ckpt.classes[:10]} but the student "
                             f"learns {r['classes'][:10]}; distil from a teacher trained on the same classes")
        if len(ckpt.classes or r["classes"]) != len(r["classes"]):
            raise ValueError(f"the teacher {cfg.teacher} has {len(ckpt.classes)} classes, the data {len(r['classes'])}")
        t_size = list(t.get("img_size") or [])
        if t_size and t_size != r["img_size"]:
            raise ValueError(f"the teacher {cfg.teacher} takes {t_size[0]}×{t_size[1]} images but the student trains "
                             f"at {r['img_size'][0]}×{r['img_size'][1]}; pass --img-size {t_size[0]} or use a teacher "
                             f"trained at this size")
        if t.get("in_chans", r["in_chans"]) != r["in_chans"]:
            raise ValueError(f"the teacher {cfg.teacher} takes {t['in_chans']}-channel images, the data has "
                             f"{r['in_chans']}; use a teacher trained on the same kind of images")
        self.teacher = Renormalised(ckpt.build_model(), r, t).to(device).eval().requires_grad_(False)  # frozen
        self.teacher_name = ckpt.model_name
        self.teacher_val_acc: float | None = None

    def describe(self) -> str:
        return (f"{super().describe()}; teacher {self.teacher_name} ({self.cfg.teacher}), {self.cfg.distill} "
                f"distillation, alpha {self.cfg.distill_alpha}, tau {self.cfg.distill_tau}")

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if hasattr(model, "set_distilled_training"):
            model.set_distilled_training(True)  # train mode returns (class logits, distillation logits)
        return model

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        return self.teacher.eval()(images).float()

    def loss(self, model, batch, gen):
        images, labels = batch
        images, soft = self.targets(images, labels, gen)
        out = model(images)
        cls, dist = out if isinstance(out, tuple) else (out, out)
        teacher = self.teacher_logits(images)
        label_loss = self.label_loss(cls, labels, soft)
        if self.cfg.distill == "soft":
            kd = soft_distillation(dist, teacher, self.cfg.distill_tau)
        else:
            kd = F.cross_entropy(dist.float(), teacher.argmax(dim=-1))
        alpha = self.cfg.distill_alpha
        return (1 - alpha) * label_loss + alpha * kd, {"label_loss": label_loss.item(), "distill_loss": kd.item()}

    def evaluate(self, model, loader, procs):
        out = super().evaluate(model, loader, procs)
        if self.teacher_val_acc is None:  # once: the teacher does not change
            self.teacher_val_acc = evaluate(self.teacher, loader, self.num_classes, self.device, self.cfg.amp,
                                            procs).top1
        return {**out, "teacher_val_acc": self.teacher_val_acc}
