"""Sequence data for the encoder–decoder: the synthetic copy and reversal tasks, and pairs from a text file.

Every item is (source ids (S,), target ids (T,)), padded with PAD to the set's fixed lengths so batches stack;
the target is BOS + the sequence + EOS. Ids 0, 1, 2 are PAD, BOS, EOS in every vocabulary (a text vocabulary
adds UNK at 3), so a Transformer built with its defaults (pad_id 0, bos_id 1, eos_id 2) reads them all.

    copy      the Annotated Transformer's task: the target is the source
    reverse   the target is the source backwards (the task Bahdanau attention draws as an anti-diagonal)
    TEXTFILE  one pair a line, 'source<TAB>target', words split on whitespace; one vocabulary for both sides,
              built from the training lines (words seen fewer than min_count times become UNK)
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .augment import rng
from .datasets import DataError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>")
TASKS = ("copy", "reverse")


class Vocabulary:
    """Tokens ↔ ids; ids 0..2 are PAD, BOS, EOS. A text vocabulary has UNK at 3 for any token not in it; the
    synthetic tasks' (symbols 'a', 'b', …) has none, and refuses a token it does not know."""

    def __init__(self, tokens: list[str]):
        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {', '.join(SPECIALS)}; got {tokens[:3]}")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.unk = self.ids.get("<unk>")

    @classmethod
    def symbols(cls, n: int) -> Vocabulary:
        """The synthetic tasks': the specials, then n symbols written a, b, c, … (ids 3 …)."""
        return cls([*SPECIALS, *(chr(ord("a") + i) for i in range(n))])

    @classmethod
    def from_texts(cls, texts: list[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for text in texts for w in text.split())
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, "<unk>", *words])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        if self.unk is None:
            unknown = sorted({w for w in text.split() if w not in self.ids or self.ids[w] <= EOS})
            if unknown:
                raise ValueError(f"{', '.join(map(repr, unknown))} not in the vocabulary; its tokens are "
                                 f"{' '.join(self.tokens[3:])}")
            return [self.ids[w] for w in text.split()]
        return [self.ids.get(w, self.unk) for w in text.split()]

    def decode(self, ids) -> str:
        """Ids up to the first EOS, specials left out."""
        out = []
        for i in (int(i) for i in ids):
            if i == EOS:
                break
            if i > EOS:
                out.append(self.tokens[i] if i < len(self.tokens) else "<unk>")  # (an id past the end: unknown)
        return " ".join(out)


def pad(ids: list[int], length: int) -> Tensor:
    return torch.tensor(ids + [PAD] * (length - len(ids)), dtype=torch.long)


class SyntheticTask(Dataset):
    """`size` random sequences of `symbols` tokens (ids 3 …), lengths min_len … max_len, each drawn from
    rng(seed, key, index): the same set on every machine, and a validation set (another key) never shared."""

    def __init__(self, task: str, size: int, seed: int, key: int, symbols: int = 8, min_len: int = 1,
                 max_len: int = 10):
        if task not in TASKS:
            raise ValueError(f"unknown sequence task {task!r}; the tasks are {', '.join(TASKS)} (or a text file)")
        self.task, self.size, self.seed, self.key = task, size, seed, key
        self.symbols, self.min_len, self.max_len = symbols, min_len, max_len
        self.vocab = Vocabulary.symbols(symbols)
        self.vocab_size = len(self.vocab)

    def __len__(self) -> int:
        return self.size

    def sequence(self, i: int) -> list[int]:
        g = rng(self.seed, self.key, i)
        n = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=g))
        return (torch.randint(0, self.symbols, (n,), generator=g) + 3).tolist()

    def __getitem__(self, item) -> tuple[Tensor, Tensor]:
        i = item[0] if isinstance(item, tuple) else item
        seq = self.sequence(i)
        out = seq if self.task == "copy" else seq[::-1]
        return pad(seq, self.max_len), pad([BOS, *out, EOS], self.max_len + 2)


class TextPairs(Dataset):
    """Pairs of a text file encoded with `vocab`, padded to the longest source and target of `pairs`."""

    def __init__(self, pairs: list[tuple[str, str]], vocab: Vocabulary, src_len: int, tgt_len: int):
        self.pairs, self.vocab, self.src_len, self.tgt_len = pairs, vocab, src_len, tgt_len

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item) -> tuple[Tensor, Tensor]:
        i = item[0] if isinstance(item, tuple) else item
        src, tgt = self.pairs[i]
        s, t = self.vocab.encode(src)[:self.src_len], self.vocab.encode(tgt)[:self.tgt_len - 2]
        return pad(s, self.src_len), pad([BOS, *t, EOS], self.tgt_len)


def read_tab_pairs(path: Path, layout: str) -> list[tuple[int, str, str]]:
    """(line number, left, right) of each non-blank 'left<TAB>right' line of `path`, both sides stripped. A line
    without a tab is an error naming it and `layout` (e.g. 'source<TAB>target'). The file must exist."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{path}:{n} has no tab: each line is '{layout}' (write a tab between the two sides)")
        left, right = line.split("\t", 1)
        pairs.append((n, left.strip(), right.strip()))
    return pairs


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """'source<TAB>target' lines; blank lines are skipped. A line without a tab is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is not a file; --data for --objective seq2seq is 'copy', 'reverse' or a text file "
                        f"of 'source<TAB>target' lines")
    pairs = [(src, tgt) for _, src, tgt in read_tab_pairs(path, "source<TAB>target")]
    if len(pairs) < 2:
        raise DataError(f"{path} holds {len(pairs)} pair(s); a run needs at least 2 (one to train, one to hold out)")
    return pairs
