"""Captioning data: strips of 1–4 handwritten digits, composed from the embedded MNIST images, captioned with
their digits in order; and image folders with a captions file.

A strip is a (1, 28, 112) canvas (four digits' width) with n digits pasted left to right at random offsets
(the free width is split at random among the n + 1 gaps, so digits never overlap and their places vary). Each
strip i is a function of rng(seed, key, i): how many digits, which images, the gaps; with `fresh`, strip i of a
training batch is drawn anew every epoch from rng(seed, key, epoch, i), so each epoch composes new strips from
the same digit images (the runtime's item keys carry the epoch; exact resume is kept). The training strips draw
only from the training split's digit images and the validation strips only from the held-out ones, so no
held-out strip shows a digit image the model trained on. Each item is (image normalised, caption ids); `spans`
gives each digit's horizontal extent, which the attention measurement checks against.

A captions file for an image folder: one line per image, 'file name<TAB>caption' (words split on whitespace).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .augment import rng
from .datasets import DataError, load_image
from .sequences import BOS, EOS, Vocabulary, pad, read_tab_pairs
from .transforms import normalize

DIGIT = 28
MAX_DIGITS = 4
STRIP = (DIGIT, DIGIT * MAX_DIGITS)


def digit_vocabulary() -> Vocabulary:
    """The specials, then the digits '0' … '9' (ids 3 … 12)."""
    return Vocabulary(["<pad>", "<bos>", "<eos>", *map(str, range(10))])


class DigitStrips(Dataset):
    """`size` strips from `digits` (a dataset of (1, 28, 28) images in [0, 1] and labels 0–9)."""

    def __init__(self, digits: Dataset, size: int, seed: int, key: int, mean=(0.5,), std=(0.5,), fresh: bool = False):
        if len(digits) == 0:
            raise DataError("no digit images to compose strips from")
        self.digits, self.size, self.seed, self.key, self.fresh = digits, size, seed, key, fresh
        self.mean, self.std = tuple(mean), tuple(std)
        self.vocab = digit_vocabulary()
        self.tgt_len = MAX_DIGITS + 2

    def __len__(self) -> int:
        return self.size

    def layout(self, i: int, epoch: int | None = None) -> list[tuple[int, int]]:
        """[(digit image index, left x)] of strip i (of that epoch, for fresh strips), left to right."""
        g = rng(self.seed, self.key, i) if epoch is None else rng(self.seed, self.key, epoch, i)
        n = int(torch.randint(1, MAX_DIGITS + 1, (1,), generator=g))
        picks = torch.randint(0, len(self.digits), (n,), generator=g).tolist()
        free = STRIP[1] - n * DIGIT
        cuts = torch.sort(torch.randint(0, free + 1, (n,), generator=g)).values.tolist()  # gap before each digit
        return [(p, cut + k * DIGIT) for k, (p, cut) in enumerate(zip(picks, cuts))]

    def spans(self, i: int) -> list[tuple[int, int]]:
        """Each digit's [x0, x1) in strip i, in caption order."""
        return [(x, x + DIGIT) for _, x in self.layout(i)]

    def __getitem__(self, item) -> tuple[Tensor, Tensor]:
        i, epoch = (item[0], item[1][1]) if isinstance(item, tuple) else (item, None)  # key: (seed, epoch, ...)
        canvas = torch.zeros(1, *STRIP)
        caption = []
        for p, x in self.layout(i, epoch if self.fresh else None):
            image, label = self.digits[p]
            canvas[:, :, x:x + DIGIT] = torch.maximum(canvas[:, :, x:x + DIGIT], image[:1])
            caption.append(3 + int(label))
        return normalize(canvas, self.mean, self.std), pad([BOS, *caption, EOS], self.tgt_len)


class CaptionedFolder(Dataset):
    """Images of a folder with captions from a 'file<TAB>caption' file, resized to img_size."""

    def __init__(self, root: str | Path, captions: str | Path, vocab: Vocabulary, img_size: tuple[int, int],
                 in_chans: int, tgt_len: int, mean, std, items: list[tuple[str, str]] | None = None):
        self.root, self.vocab, self.img_size, self.in_chans = Path(root), vocab, img_size, in_chans
        self.tgt_len, self.mean, self.std = tgt_len, tuple(mean), tuple(std)
        self.items = items if items is not None else read_captions(captions, self.root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> tuple[Tensor, Tensor]:
        i = item[0] if isinstance(item, tuple) else item
        name, caption = self.items[i]
        image = load_image(self.root / name, in_chans=self.in_chans, img_size=self.img_size)
        ids = self.vocab.encode(caption)[:self.tgt_len - 2]
        return normalize(image, self.mean, self.std), pad([BOS, *ids, EOS], self.tgt_len)


def read_captions(path: str | Path, root: Path) -> list[tuple[str, str]]:
    """'file<TAB>caption' lines of `path`; every file must exist under `root`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no captions file {path}: an image folder for --objective caption needs one, with a "
                        f"'file name<TAB>caption' line per image")
    items = []
    for n, name, caption in read_tab_pairs(path, "file name<TAB>caption"):
        if not (root / name).is_file():
            raise DataError(f"{path}:{n} names {name}, which is not a file in {root}")
        items.append((name, caption))
    if len(items) < 2:
        raise DataError(f"{path} captions {len(items)} image(s); a run needs at least 2 (one to hold out)")
    return items
