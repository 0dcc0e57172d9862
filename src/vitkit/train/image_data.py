"""Image data for the objectives that learn from images: the splits, the per-image transforms and the record
saved beside the weights, from which `vitkit eval`, `explain` and `predict` rebuild the same split and the
same evaluation transform.

Training images go through `TrainTransform` one at a time, each with its own generator keyed by
(seed, epoch, step, micro-batch, position) (train/plan.py), so the draws never depend on which worker or
process loads them. Evaluation images go through `EvalTransform`: resize the short side to img_size / crop_pct,
keeping the aspect ratio, then cut the centre (the rule the record stores).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data import EMBEDDED, DataError, build_dataset, dataset_classes, dataset_labels, normalize, random_crop, split
from ..data.augment import RandAugment, hflip, random_erasing, random_resized_crop, resize_center_crop, rng
from ..layers.patch_embed import to_2tuple


@dataclass(frozen=True)
class EvalTransform:
    """(C, H, W) in [0, 1] at any size → (C, *img_size): aspect-preserving resize + centre crop, then
    normalisation (skipped when mean is None; `view` stops before it)."""
    img_size: tuple[int, int]
    crop_pct: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def view(self, img: Tensor) -> Tensor:
        return resize_center_crop(img, self.img_size, crop_pct=self.crop_pct)

    def __call__(self, img: Tensor, gen: torch.Generator | None = None) -> Tensor:
        img = self.view(img)
        return img if self.mean is None else normalize(img, self.mean, self.std)


@dataclass(frozen=True)
class TrainTransform:
    """One training image (C, H, W) in [0, 1] → (C, *img_size), normalised: crop → flip → RandAugment →
    normalise → random erasing, every draw from `gen`."""
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: str = "shift"          # 'shift', 'rrc' or 'none' (the evaluation rule)
    crop_padding: int = 1
    rrc_scale: float = 0.08
    crop_pct: float = 1.0
    hflip: float = 0.0
    rand_magnitude: float = 0.0
    rand_ops: int = 2
    erase: float = 0.0

    def __call__(self, img: Tensor, gen: torch.Generator) -> Tensor:
        if self.crop == "rrc":
            img = random_resized_crop(img, self.img_size, scale=(self.rrc_scale, 1.0), generator=gen)
        else:
            img = resize_center_crop(img, self.img_size, crop_pct=self.crop_pct)
            if self.crop == "shift" and self.crop_padding:
                img = random_crop(img, self.img_size, self.crop_padding, generator=gen)
        if self.hflip:
            img = hflip(img, self.hflip, generator=gen)
        if self.rand_magnitude:
            img = RandAugment(num_ops=self.rand_ops, magnitude=self.rand_magnitude)(img, gen)
        img = normalize(img, self.mean, self.std)
        if self.erase:
            img = random_erasing(img, p=self.erase, generator=gen)
        return img


class Transformed(Dataset):
    """`ds` with a per-image transform. Items may be asked for as `i` (no randomness: a generator seeded 0)
    or as `(i, key)`, the form train/plan.py's EpochPlan yields (the image's draws come from `key`)."""

    def __init__(self, ds: Dataset, transform: Callable[[Tensor, torch.Generator], Tensor]):
        self.ds, self.transform = ds, transform
        self.classes = dataset_classes(ds)
        self.labels = dataset_labels(ds)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item) -> tuple[Tensor, int]:
        i, key = item if isinstance(item, tuple) else (item, (0,))
        image, label = self.ds[i]
        return self.transform(image, rng(*key)), label


class Relabelled(Dataset):
    """The samples of `ds` whose class is in `keep`, labelled 0 … len(keep) - 1 in the order of `keep`."""

    def __init__(self, ds: Dataset, keep: list[str]):
        names = dataset_classes(ds)
        unknown = [c for c in keep if c not in names]
        if unknown:
            raise DataError(f"--classes names {', '.join(unknown)}, which the data does not have; its classes are "
                            f"{', '.join(names[:20])}")
        old = dataset_labels(ds)
        new_of_old = {names.index(c): i for i, c in enumerate(keep)}
        self.indices = [i for i, y in enumerate(old.tolist()) if y in new_of_old]
        self.labels = torch.tensor([new_of_old[int(old[i])] for i in self.indices], dtype=torch.long)
        self.classes, self.ds = list(keep), ds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.ds[self.indices[i]][0], int(self.labels[i])


@dataclass
class ImageSplits:
    train: Dataset   # untransformed (C, H, W) images in [0, 1], with .classes and .labels
    val: Dataset
    record: dict     # what checkpoints store: source, classes, img_size, in_chans, mean, std, crop_pct, split


def _folders(cfg) -> tuple[Path, Path | None]:
    root = Path(cfg.data)
    if cfg.data not in EMBEDDED and (root / "train").is_dir() and (root / "val").is_dir():
        if cfg.val_data:
            raise DataError(f"{root} holds train/ and val/ folders and --val-data {cfg.val_data} is given too; "
                            f"pass one of them")
        return root / "train", root / "val"
    return root, Path(cfg.val_data) if cfg.val_data else None


def _subset_stratified(ds: Dataset, count: int, seed: int) -> Dataset:
    if count >= len(ds):
        return ds
    return split(ds, count / len(ds), seed)[1]  # the held-out side of a stratified split: `count` images, by class


def image_splits(cfg, *, img_size, in_chans: int, mean, std) -> ImageSplits:
    """The training and validation images of a resolved TrainConfig."""
    train_root, val_root = _folders(cfg)
    embedded = cfg.data in EMBEDDED
    size = to_2tuple(img_size) if img_size is not None else None
    source = cfg.data if embedded else str(train_root)
    full = build_dataset(source, img_size=size if embedded else None, in_chans=in_chans)
    if size is None:  # an embedded set at its own size
        size = tuple(full[0][0].shape[-2:])
    keep = [c.strip() for c in cfg.classes.split(",")] if cfg.classes else None
    if keep:
        full = Relabelled(full, keep)
    if val_root is not None:
        val = build_dataset(str(val_root), img_size=None, in_chans=in_chans)
        if keep:
            val = Relabelled(val, keep)
        if dataset_classes(val) != dataset_classes(full):
            raise DataError(f"the validation folder {val_root} has classes {dataset_classes(val)[:10]} but the "
                            f"training data has {dataset_classes(full)[:10]}; give both the same class folders")
        train = full  # a validation folder is given: every training image trains
    else:
        train, val = split(full, cfg.val_fraction, cfg.seed)
    if cfg.train_size:
        train = _subset_stratified(train, cfg.train_size, cfg.seed)
    if len(val) == 0:
        raise DataError("the validation split is empty; use more data, a larger --val-fraction or --val-data")
    c = full[0][0].shape[0]
    if len(mean) != c:
        mean, std = (0.5,) * c, (0.5,) * c
    record = {"source": cfg.data, "val_data": str(val_root) if val_root else None, "classes": dataset_classes(full),
              "class_filter": keep, "img_size": list(size), "in_chans": c, "mean": list(mean), "std": list(std),
              "crop_pct": cfg.crop_pct, "val_fraction": 0.0 if val_root else cfg.val_fraction, "seed": cfg.seed}
    return ImageSplits(train, val, record)


def eval_transform(record: dict, normalise: bool = True) -> EvalTransform:
    """The evaluation transform a checkpoint's data record describes (older records: squash to img_size)."""
    return EvalTransform(tuple(record["img_size"]), record.get("crop_pct") or 1.0,
                         tuple(record["mean"]) if normalise else None, tuple(record["std"]) if normalise else None)


def validation_set(record: dict) -> Dataset:
    """The validation images a run held out, rebuilt from its checkpoint's data record (untransformed)."""
    missing = [k for k in ("source", "seed", "val_fraction") if k not in record]
    if missing:
        raise ValueError(f"this checkpoint's data record lacks {', '.join(missing)}, so its validation split cannot "
                         f"be rebuilt; it was not written by `vitkit train`. Pass --data or IMAGE files instead")
    embedded = record["source"] in EMBEDDED
    size = tuple(record["img_size"]) if embedded else None
    if record.get("val_data"):
        val = build_dataset(record["val_data"], img_size=size, in_chans=record["in_chans"])
        return Relabelled(val, record["class_filter"]) if record.get("class_filter") else val
    root = Path(record["source"])
    if not embedded and (root / "train").is_dir() and (root / "val").is_dir():
        root = root / "train"
    full = build_dataset(record["source"] if embedded else str(root), img_size=size, in_chans=record["in_chans"])
    if record.get("class_filter"):
        full = Relabelled(full, record["class_filter"])
    return split(full, record["val_fraction"], record["seed"])[1]


__all__ = ["EvalTransform", "ImageSplits", "Relabelled", "TrainTransform", "Transformed", "eval_transform",
           "image_splits", "validation_set"]
