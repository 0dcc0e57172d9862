"""Processes: one, or several under torchrun. Everything else asks this module who it is.

    torchrun --nproc_per_node 2 -m vitkit train ...

runs one process per rank with RANK, WORLD_SIZE and LOCAL_RANK set; `Processes.start()` joins them into a
group (gloo on the CPU, NCCL on CUDA). Only rank 0 writes the run folder; every rank computes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """'auto' (or None): CUDA where present, else the CPU. Asking for CUDA without one is an error.
    Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was asked for but torch sees no CUDA GPU (torch {torch.__version__}, "
                           f"built for CUDA {torch.version.cuda}); use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_group: bool = False   # this object initialised the process group (and so destroys it)

    @classmethod
    def start(cls, device: torch.device) -> "Processes":
        """Join torchrun's process group if this process was started by torchrun; else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        started = False
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            started = True
        return cls(rank, world, local, started)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: Tensor) -> Tensor:
        """The sum of `t` over every process (in place; `t` itself on one process)."""
        if self.world > 1:
            torch_dist.all_reduce(t)
        return t

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def stop(self) -> None:
        if self.started_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
