"""The DINO objective: self-distillation with no labels, on the one trainer (labels are used only to evaluate).

    vitkit train --objective dino --data mnist --epochs 30 --weight-decay 0.04 --weight-decay-end 0.4
    vitkit train --init runs/dino-mnist/best.safetensors --data mnist --train-size 400   # fine-tune the teacher

Every training image becomes 2 global crops (at the model's size, area 40–100%) and `local_crops` local ones
(area 5–40%, at local_size), each from the image's own generator. Per optimiser step (models/dino.py has the
loss): the teacher temperature warms up from 0.04 to 0.07, the last layer is not updated in the first epoch,
and after the update the teacher moves to the student by an EMA whose momentum follows a cosine from 0.996 to
1, and the centre moves to the mean teacher score of the step's whole batch, summed over every process.
`--weight-decay-end` gives DINO's cosine weight-decay schedule (a runtime option).

Evaluation, each epoch, on the teacher's backbone ([CLS] features): k-NN accuracy on the validation split,
with the training split (eval crops, labels) as the bank: cosine similarity, the k = 20 nearest, votes
weighted by exp(sim / 0.07). Logged per step: the teacher's output entropy and the centre's norm (a collapse
shows as an entropy at 0 or at log K). After the last epoch, a linear probe on the frozen features is fitted
and written to linear_probe.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import normalize
from ..data.augment import hflip, random_resized_crop
from ..models.dino import DINO, dino_loss
from ..registry import model_config
from .image_data import Transformed, eval_transform
from .objective import register_objective
from .pretraining import Pretraining
from .optim import cosine

KNN_K, KNN_T, KNN_BANK = 20, 0.07, 10_000


@dataclasses.dataclass(frozen=True)
class MultiCrop:
    """(C, H, W) in [0, 1] → [2 global crops, then the local ones], each normalised."""
    global_size: tuple[int, int]
    local_size: tuple[int, int]
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    local_crops: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: float = 0.0

    def __call__(self, img: Tensor, gen: torch.Generator) -> list[Tensor]:
        views = [(self.global_size, self.global_scale)] * 2 + [(self.local_size, self.local_scale)] * self.local_crops
        out = []
        for size, scale in views:
            crop = random_resized_crop(img, size, scale=scale, generator=gen)
            if self.flip:
                crop = hflip(crop, self.flip, generator=gen)
            out.append(normalize(crop, self.mean, self.std))
        return out


@torch.no_grad()
def features(backbone: nn.Module, ds: Dataset, device, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """L2-normalised [CLS] features (N, D) and labels (N,) of `ds` (eval-transformed images, labels)."""
    feats, labels = [], []
    for images, y in DataLoader(ds, batch_size=batch_size):
        feats.append(F.normalize(backbone(images.to(device)).float(), dim=-1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int = KNN_K,
                temperature: float = KNN_T) -> Tensor:
    """DINO's weighted k-NN: the k most cosine-similar bank features vote with weight exp(sim / T)."""
    sims = queries @ bank.T                                   # (Q, N)
    top, idx = sims.topk(min(k, bank.shape[0]), dim=1)        # (Q, k)
    votes = torch.zeros(queries.shape[0], num_classes)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return votes.argmax(dim=1)


@register_objective
class Dino(Pretraining):
    name = "dino"
    prefix = "dino_"
    score = "val_knn_acc"

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        r = self.record
        self.dcfg = model_config(self.model_name, **self.model_overrides)
        h, w = r["img_size"]
        patch = self.dcfg.patch_size
        side = self.dcfg.local_size or max(patch, round(h * 96 / 224 / patch) * patch)
        self.train_set = Transformed(self.train_set.ds, MultiCrop(
            (h, w), (side, side), tuple(self.dcfg.global_crops_scale), tuple(self.dcfg.local_crops_scale),
            self.dcfg.local_crops, tuple(r["mean"]), tuple(r["std"]), flip=self.cfg.hflip or 0.0))
        self.bank_set = Transformed(_evenly(self.train_set.ds, KNN_BANK), eval_transform(r))
        self.n_views = 2 + self.dcfg.local_crops
        self.teacher_temp, self.epoch, self.momentum = self.dcfg.teacher_temp, 0, self.dcfg.momentum_teacher
        self._pending = None  # (sum of teacher scores, count) over this step's micro-batches

    def describe(self) -> str:
        return (super().describe() + f"; 2 global crops and {self.dcfg.local_crops} local ones "
                f"({self.train_set.transform.local_size[0]} px) per image")

    def begin_step(self, step, total_steps, steps_per_epoch):
        d = self.dcfg
        warm = max(1, round(d.warmup_teacher_temp_frac * total_steps))
        self.teacher_temp = (d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * step / warm
                             if step < warm else d.teacher_temp)
        self.momentum = cosine(step, total_steps, d.momentum_teacher, 1.0)
        self.epoch = step // steps_per_epoch
        self._pending = None

    def loss(self, model, batch, gen):
        crops, _ = batch
        student, teacher = model(crops)
        dino: DINO = getattr(model, "module", model)
        loss = dino_loss(student, teacher, dino.center, self.n_views, 2, self.dcfg.student_temp, self.teacher_temp)
        total = teacher.float().sum(dim=0)
        self._pending = (total, len(teacher)) if self._pending is None else \
            (self._pending[0] + total, self._pending[1] + len(teacher))
        probs = F.softmax((teacher.float() - dino.center) / self.teacher_temp, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        return loss, {"teacher_entropy": entropy.item(), "center_norm": dino.center.norm().item(),
                      "teacher_temp": self.teacher_temp}

    def before_update(self, model):
        if self.epoch < self.dcfg.freeze_last_layer_epochs:
            for p in model.student.head.last_layer.parameters():
                p.grad = None  # skipped by the optimiser, weight decay included

    def end_step(self, model, procs):
        total, count = self._pending
        summed = procs.all_reduce(torch.cat([total, torch.tensor([float(count)], device=total.device)]))
        model.update_center(summed[:-1] / summed[-1], self.dcfg.center_momentum)
        model.update_teacher(self.momentum)

    @torch.no_grad()
    def evaluate(self, model, loader, procs):
        backbone = model.teacher.backbone
        was_training = model.training
        model.eval()
        bank, bank_labels = features(backbone, self.bank_set, self.device)
        hits = torch.zeros(2, dtype=torch.float64)  # correct, count
        for images, labels in loader:
            q = F.normalize(backbone(images.to(self.device)).float(), dim=-1).cpu()
            pred = knn_predict(bank, bank_labels, q, self.num_classes)
            hits += torch.tensor([(pred == torch.as_tensor(labels)).sum().item(), len(labels)], dtype=torch.float64)
        model.train(was_training)
        procs.all_reduce(hits)
        return {"val_knn_acc": float(hits[0] / hits[1])}

    def finish(self, model, run_dir: Path) -> None:
        result = linear_probe(model.teacher.backbone, self.bank_set, self.val_set, self.num_classes, self.device)
        (run_dir / "linear_probe.json").write_text(json.dumps(result, indent=2) + "\n")
        self.log(f"linear probe on the teacher's frozen features: val_acc {result['val_acc']:.4f} "
                 f"(train {result['train_acc']:.4f})")


def _evenly(ds: Dataset, most: int) -> Dataset:
    from torch.utils.data import Subset
    step = max(1, math.ceil(len(ds) / most))
    return ds if step == 1 else Subset(ds, range(0, len(ds), step))


def linear_probe(backbone: nn.Module, train: Dataset, val: Dataset, num_classes: int, device,
                 epochs: int = 100, lr: float = 0.1, weight_decay: float = 1e-4, seed: int = 0) -> dict:
    """A linear classifier on frozen, L2-normalised features: full-batch AdamW on cross-entropy."""
    was_training = backbone.training
    backbone.eval()
    x_train, y_train = features(backbone, train, device)
    x_val, y_val = features(backbone, val, device)
    backbone.train(was_training)
    torch.manual_seed(seed)
    probe = nn.Linear(x_train.shape[1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(probe(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        acc = lambda x, y: float((probe(x).argmax(1) == y).float().mean())  # noqa: E731
        return {"train_acc": acc(x_train, y_train), "val_acc": acc(x_val, y_val), "epochs": epochs, "lr": lr,
                "train_images": len(y_train), "val_images": len(y_val)}
