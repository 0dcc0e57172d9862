"""The classification objective: images and labels, cross-entropy (label smoothing, or soft targets under
mixup/cutmix), top-1/top-5/loss/confusion over the validation split."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import EMBEDDED
from ..data.augment import mix_batch, soft_target_cross_entropy
from ..registry import create_model, get_entry, model_config
from ..weights.pretrained import fit_pretrained
from .dist import Processes
from .image_data import TrainTransform, Transformed, eval_transform, image_splits
from .metrics import confusion_matrix, topk_correct
from .objective import Objective, register_objective


@dataclass
class EvalResult:
    loss: float
    top1: float          # fraction correct, 0..1
    top5: float
    confusion: Tensor    # (C, C): row = true class, column = predicted
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, amp: bool = False,
             procs: Processes | None = None) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of `model` over `loader` (batches of normalised images and
    labels), summed over every process when `procs` has several."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, count
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(images).float()
        hits = topk_correct(logits, labels)
        sums += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(), hits[1], hits[5], len(labels)],
                             dtype=torch.float64)
        conf += confusion_matrix(logits.argmax(1).cpu(), labels.cpu(), num_classes)
    model.train(was_training)
    if procs is not None:
        procs.all_reduce(sums), procs.all_reduce(conf)
    n = int(sums[3])
    if n == 0:
        raise ValueError("the validation split is empty; use more data or a larger --val-fraction")
    return EvalResult(float(sums[0]) / n, float(sums[1]) / n, float(sums[2]) / n, conf, n)


@register_objective
class Classify(Objective):
    name = "classify"
    score = "val_acc"

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        base = {**(init.overrides if init and init.model_name == cfg.model else {}), **cfg.model_overrides}
        mcfg = model_config(cfg.model, **base)
        embedded = cfg.data in EMBEDDED
        entry = get_entry(cfg.model)
        img_size = cfg.img_size or (None if embedded else mcfg.img_size)
        in_chans = mcfg.in_chans if (init or not embedded) else None
        splits = image_splits(cfg, img_size=img_size, in_chans=in_chans, mean=entry.mean, std=entry.std)
        self.record = splits.record
        r = splits.record
        h, w = r["img_size"]
        self.num_classes = len(r["classes"])
        self.model_name = cfg.model
        self.model_overrides = {**base, "num_classes": self.num_classes, "in_chans": r["in_chans"],
                                "img_size": h if h == w else (h, w)}
        if cfg.drop_path:
            self.model_overrides["drop_path_rate"] = cfg.drop_path
        augment = TrainTransform((h, w), tuple(r["mean"]), tuple(r["std"]), crop=cfg.train_crop,
                                 crop_padding=cfg.crop_padding, rrc_scale=cfg.rrc_scale, crop_pct=cfg.crop_pct,
                                 hflip=cfg.hflip, rand_magnitude=cfg.rand_magnitude, rand_ops=cfg.rand_ops,
                                 erase=cfg.erase)
        self.train_set = Transformed(splits.train, augment)
        self.val_set = Transformed(splits.val, eval_transform(r))

    def describe(self) -> str:
        return (f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes, "
                f"{'×'.join(map(str, self.record['img_size']))} pixels")

    def build_model(self) -> nn.Module:
        if self.init is None:
            return create_model(self.model_name, **self.model_overrides)
        model, notes = fit_pretrained(self.init, classes=self.record["classes"], **self.model_overrides)
        self.log(f"initialised from {self.init.source_path} ({self.init.source}, {self.init.model_name})")
        for note in notes or ["every tensor loaded as it is: nothing resized, the head kept"]:
            self.log(f"  {note}")
        return model.train()

    def targets(self, images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """(images, soft targets (B, K)) when mixup or cutmix is on; (images, None) otherwise."""
        cfg = self.cfg
        if not (cfg.mixup or cfg.cutmix):
            return images, None
        return mix_batch(images, labels, self.num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                         prob=cfg.mix_prob, switch_prob=cfg.mix_switch, label_smoothing=cfg.label_smoothing,
                         generator=gen)

    def label_loss(self, logits: Tensor, labels: Tensor, soft: Tensor | None) -> Tensor:
        if soft is not None:
            return soft_target_cross_entropy(logits.float(), soft)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)

    def loss(self, model, batch, gen):
        images, labels = batch
        images, soft = self.targets(images, labels, gen)
        return self.label_loss(model(images), labels, soft), {}

    def evaluate(self, model, loader, procs):
        res = evaluate(model, loader, self.num_classes, self.device, self.cfg.amp, procs)
        return {"val_loss": res.loss, "val_acc": res.top1, "val_top5": res.top5}
