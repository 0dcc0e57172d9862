"""Which images each process sees, and the random key of every draw: a function of (seed, epoch, step) alone.

An epoch's order is a permutation drawn from (seed, epoch). It is cut into global batches of `batch_size`
images (the tail that does not fill one is left out, as DeiT does), and each global batch into `micro`
micro-batches of equal size. Process r of W takes micro-batches r·(micro/W) … (r+1)·(micro/W) - 1 of every
step. So one process with accum_steps 4 and four processes with one each see the same micro-batches, and
every micro-batch carries the same key (seed, epoch, step, index) on any number of processes: mixup, the
augmentation of each image and the dropout mask depend on nothing else, which makes resume exact and a
torchrun run equal to a single-process one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..data.augment import rng


@dataclass(frozen=True)
class EpochPlan:
    """The micro-batches of one process in one epoch. Iterating yields lists of (dataset index, key) pairs, the
    batch_sampler form a DataLoader takes; the key (seed, epoch, step, micro, 0, position) seeds that image's
    augmentation. `steps` optimiser steps, each of `local_micro` micro-batches."""
    size: int          # images in the training split
    batch_size: int    # global batch: images per optimiser step over all processes
    micro: int         # micro-batches per step over all processes
    rank: int
    world: int
    seed: int
    epoch: int

    def __post_init__(self):
        if self.micro % self.world:
            raise ValueError(f"--accum-steps {self.micro} is not a multiple of the {self.world} processes; pass a "
                             f"multiple of {self.world}, so that every process runs the same number of micro-batches")
        if self.batch_size % self.micro:
            raise ValueError(f"--batch-size {self.batch_size} does not split into {self.micro} equal micro-batches; "
                             f"pass a batch size divisible by {self.micro}")
        if self.steps == 0:
            raise ValueError(f"the training split has {self.size} images, fewer than one batch of "
                             f"{self.batch_size}; lower --batch-size to at most {self.size}")

    @property
    def steps(self) -> int:
        return self.size // self.batch_size

    @property
    def local_micro(self) -> int:
        return self.micro // self.world

    @property
    def micro_size(self) -> int:
        return self.batch_size // self.micro

    def order(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=rng(self.seed, self.epoch))

    def micro_key(self, step: int, index: int) -> tuple[int, int, int, int]:
        """The key of micro-batch `index` (0 … micro - 1, global numbering) of `step` within this epoch."""
        return (self.seed, self.epoch, step, index)

    def local_indices(self, step: int) -> range:
        """Global numbers of the micro-batches this process runs at `step`."""
        first = self.rank * self.local_micro
        return range(first, first + self.local_micro)

    def __len__(self) -> int:
        return self.steps * self.local_micro

    def __iter__(self) -> Iterator[list[tuple[int, tuple]]]:
        order, m = self.order().tolist(), self.micro_size
        for step in range(self.steps):
            for j in self.local_indices(step):
                start = step * self.batch_size + j * m
                yield [(order[start + i], (*self.micro_key(step, j), 0, i)) for i in range(m)]  # 0: image draws


@dataclass(frozen=True)
class EvalShards:
    """This process's share of an evaluation set, as a batch_sampler: items rank, rank + world, ... cut into the
    same number of batches on every process (FSDP runs each batch as a collective, so no process may run one
    more than the others). Batches are never empty and hold at most `batch_size` items (2 where that is 1 and
    the shares differ)."""
    size: int
    batch_size: int
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.size < self.world:
            raise ValueError(f"the validation split has {self.size} items, fewer than the {self.world} processes; "
                             f"use more validation data or fewer processes")

    def __len__(self) -> int:
        largest, smallest = -(-self.size // self.world), self.size // self.world
        return min(-(-largest // self.batch_size), smallest)

    def __iter__(self) -> Iterator[list[int]]:
        mine = list(range(self.rank, self.size, self.world))
        n = len(self)
        bounds = [len(mine) * b // n for b in range(n + 1)]  # n nearly equal cuts, none empty
        for lo, hi in zip(bounds, bounds[1:]):
            yield mine[lo:hi]
