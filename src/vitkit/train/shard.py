"""How the weights are held across processes: replicated (one process, or DDP) or sharded (FSDP2, --fsdp).

    torchrun --nproc_per_node 2 -m vitkit train ... --fsdp

Replicated: every process holds all the weights; under torchrun, DDP averages the gradients. Sharded: every
block (each module whose class name ends in "Block") and then the whole model go through FSDP2's
`fully_shard`, so each process holds 1/N of the weights, gradients, optimiser state and EMA, and gathers a
block's weights only while it runs. The two train the same weights (tests/test_ddp.py).

Whatever the layout, checkpoints hold full tensors in one format: `full_state` and `optimizer_state` gather
them (collectives: every process calls them), and the loaders scatter them again. So a run saved under FSDP
resumes on one process, and the other way round.
"""
from __future__ import annotations

from itertools import chain

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .dist import Processes
from .state import flatten_optimizer, unflatten_optimizer


class Replicated:
    """Every process holds the whole model."""

    def __init__(self, procs: Processes, device: torch.device):
        self.procs, self.device = procs, device

    def wrap(self, model: nn.Module, ema: nn.Module | None = None) -> nn.Module:
        """The module the optimiser steps through (DDP under torchrun). Call before building the optimiser."""
        if self.procs.world == 1:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def full_state(self, module: nn.Module) -> dict[str, Tensor]:
        return module.state_dict()

    def load_state(self, module: nn.Module, state: dict[str, Tensor]) -> None:
        module.load_state_dict(state, strict=True)

    def optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
        return flatten_optimizer(opt.state_dict())

    def load_optimizer(self, model: nn.Module, opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
        _check_groups(opt, groups)
        opt.load_state_dict(unflatten_optimizer(tensors, groups))

    def all_finite(self, module: nn.Module) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


class Sharded(Replicated):
    """FSDP2: each process holds a 1/N shard of every parameter (and of its gradient and optimiser state)."""

    def __init__(self, procs: Processes, device: torch.device):
        if procs.world < 2:
            raise ValueError("--fsdp shards the model over processes, and this is one process; start it with "
                             "torchrun --nproc_per_node N -m vitkit train ... (N ≥ 2), or drop --fsdp")
        super().__init__(procs, device)
        from torch.distributed.device_mesh import init_device_mesh
        self.mesh = init_device_mesh(device.type, (procs.world,))

    def wrap(self, model: nn.Module, ema: nn.Module | None = None) -> nn.Module:
        for module in (model, ema):
            if module is not None:
                self._shard(module)
        return model

    def _shard(self, module: nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard
        blocks = [m for m in module.modules() if type(m).__name__.endswith("Block")]
        for block in reversed(blocks):  # innermost first, as fully_shard requires
            fully_shard(block, mesh=self.mesh)
        fully_shard(module, mesh=self.mesh)

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, **kw)

    def full_state(self, module: nn.Module) -> dict[str, Tensor]:
        """The gathered state on rank 0 (on the CPU); {} on the others."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(module, options=self._options(cpu_offload=True))

    def load_state(self, module: nn.Module, state: dict[str, Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        set_model_state_dict(module, state, options=self._options())

    def optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
        """As Replicated's: parameters numbered in optimiser order, so the file does not say how it was trained."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        full = get_optimizer_state_dict(model, opt, options=self._options(cpu_offload=True))
        if not full:
            return {}, []
        number = {name: i for i, name in enumerate(chain.from_iterable(g["params"] for g in full["param_groups"]))}
        return flatten_optimizer({
            "state": {number[name]: s for name, s in full["state"].items()},
            "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in full["param_groups"]]})

    def load_optimizer(self, model: nn.Module, opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        _check_groups(opt, groups)
        numbered = unflatten_optimizer(tensors, groups)
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
        state = {"state": {order[i]: s for i, s in numbered["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in numbered["param_groups"]]}
        set_optimizer_state_dict(model, opt, state, options=self._options())

    def all_finite(self, module: nn.Module) -> bool:
        """Every process checks its shards; the answer is the same on all of them."""
        from torch.distributed.tensor import DTensor
        bad = sum(int(not torch.isfinite(t.to_local() if isinstance(t, DTensor) else t).all())
                  for t in module.state_dict().values() if t.is_floating_point())
        return int(self.procs.all_reduce(torch.tensor(bad))) == 0


def _check_groups(opt: torch.optim.Optimizer, groups: list) -> None:
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"the checkpoint's optimiser has {len(groups)} parameter groups but this run builds "
                         f"{len(opt.param_groups)}; resume with the same --freeze, --layer-decay and model")


def spread(fsdp: bool, procs: Processes, device: torch.device) -> Replicated:
    return (Sharded if fsdp else Replicated)(procs, device)
