"""The studies' data: trained models read back with their held-out images, and the image sets built for a claim
(2×2 digit grids, digits pasted into clutter, crops of photos), written as image folders the trainer reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import TensorImageDataset, export_images, load_embedded
from ..data.transforms import normalize

# The trainer's options for a study's image folder: the embedded sets' augmentation (±1 px shifts, no flips,
# no crop at evaluation), not the photo-folder defaults (random-resized crops and flips).
FOLDER_AS_EMBEDDED = dict(train_crop="shift", crop_padding=1, hflip=0.0, crop_pct=1.0)


def best_model(run_dir: Path) -> tuple[nn.Module, dict]:
    """The best checkpoint of a run, rebuilt in eval mode, and its data record (classes, split, normalisation)."""
    from ..registry import create_model
    from ..weights import load_checkpoint

    ckpt = load_checkpoint(Path(run_dir) / "best.safetensors")
    model = create_model(ckpt.model_name, **ckpt.overrides)
    model.load_state_dict(ckpt.state)
    return model.eval(), ckpt.data


def held_out(record: dict, n: int | None = None, img_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The run's validation images (the first n): (raw (B, C, H, W) in [0, 1], normalised, labels (B,)), at
    img_size (bilinear, antialiased; default: the training size)."""
    from ..train import validation_set

    val = validation_set(record)
    n = len(val) if n is None else min(n, len(val))
    raw = torch.stack([val[i][0] for i in range(n)])
    labels = torch.tensor([int(val[i][1]) for i in range(n)])
    size = tuple(record["img_size"]) if img_size is None else (img_size, img_size)
    if tuple(raw.shape[-2:]) != size:
        raw = F.interpolate(raw, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return raw, normalize(raw, record["mean"], record["std"]), labels


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 250) -> float:
    """Top-1 of a classifier on normalised images."""
    model.eval()
    hits = sum(int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / len(images)


def write_folder(images: Tensor, labels: Tensor, classes: list[str], root: Path) -> Path:
    """An image folder (root/<class>/<index>.png) the trainer reads with --data root."""
    export_images(TensorImageDataset(images, labels, classes), root)
    return root


def mnist() -> TensorImageDataset:
    return load_embedded("mnist")


def shrink(images: Tensor, size: int) -> Tensor:
    """(N, C, H, W) → (N, C, size, size), bilinear and antialiased."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def quadrants(count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """2×2 grids of MNIST digits shrunk to 14×14 in a 28×28 image; the label is the top-left digit's class.
    A model that sees the patches as an unordered set sees four digits and cannot tell which is top left."""
    ds = mnist()
    small = shrink(ds.images, 14)  # (5000, 1, 14, 14)
    rng = np.random.RandomState(seed)
    pick = torch.from_numpy(rng.randint(0, len(small), size=(count, 4)))  # (count, 4): TL, TR, BL, BR
    tiles = small[pick]  # (count, 4, 1, 14, 14)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)  # (count, 1, 14, 28)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2), ds.labels[pick[:, 0]]


def photos_gray() -> list[Tensor]:
    """scikit-learn's two sample photos (china, flower), (1, 427, 640) grayscale in [0, 1]."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        rgb = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        out.append((0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None])
    return out


def random_crops(photo: Tensor, count: int, size: int, rng: np.random.RandomState) -> Tensor:
    """count size×size crops of a (C, H, W) photo at random places: (count, C, size, size)."""
    _, H, W = photo.shape
    ys, xs = rng.randint(0, H - size + 1, count), rng.randint(0, W - size + 1, count)
    return torch.stack([photo[:, y:y + size, x:x + size] for y, x in zip(ys, xs)])
