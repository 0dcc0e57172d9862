"""The training runtime: one loop for every objective (train/objective.py says who owns what).

A run lives in runs/<name>/ (written by rank 0 alone):
    last.safetensors   weights + optimiser + EMA + config after the latest epoch: what --resume continues
    best.safetensors   weights of the epoch with the best validation score, with the data record
    ema.safetensors    the EMA of the weights after the latest epoch (with --ema)
    metrics.jsonl      one JSON object per epoch: epoch, train_loss, the objective's figures, lr, times
    metrics.png        loss, validation figures and learning rate, refreshed as the run goes
    config.json        the run's resolved TrainConfig (feed it back with --config)

Exact resume needs no saved random state: every draw (the epoch's order, each image's augmentation, mixup, the
dropout and drop-path masks) is keyed by (seed, epoch, step, micro-batch) (train/plan.py). So a run resumed
after epoch k ends with the weights of one that never stopped, on any number of processes.
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import EMBEDDED
from ..data.augment import rng, rng_seed
from ..weights import load_checkpoint, save_checkpoint
from .config import TrainConfig, objective_name, resolve
from .dist import Processes, resolve_device
from .ema import WeightEma
from .metrics import append_metrics, plot_metrics, read_metrics, write_metrics
from .objective import Objective, get_objective
from .optim import cosine, freeze_backbone, lr_factor, make_optimizer, set_lr, set_weight_decay
from .plan import EpochPlan, EvalShards
from .shard import spread
from .state import clear_run, remove_orphans, resume_config

PLOT_EVERY_S = 30.0  # metrics.png is redrawn at most this often (drawing costs 0.3–0.8 s), and after the last epoch


class RunExistsError(FileExistsError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    best_score: float        # the objective's score (val_acc for classification) of best.safetensors
    metrics: list[dict]
    model: nn.Module         # the trained model (raw weights, last epoch)


# ---- one optimiser step: shared with `vitkit bench` ---------------------------------------------------
def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, micro_batches: list,
                   keys: list[tuple] | None = None, *, clip_grad: float | None = None,
                   autocast=nullcontext, before_update: Callable[[], None] | None = None) -> tuple[float, dict[str, float]]:
    """One step over a list of micro-batches: for each, the global RNG (dropout, drop path) is seeded from its
    key, loss_fn(model, batch, generator) runs under `autocast`, and loss / len(micro_batches) is back-propagated
    (under DDP or FSDP, gradients are exchanged on the last micro-batch only). Then the gradients are clipped to
    `clip_grad` and checked: a non-finite norm raises FloatingPointError before the weights change;
    `before_update` runs last, just before the optimiser applies the gradients.
    Returns (mean loss, mean of the extra figures)."""
    keys = keys or [(i,) for i in range(len(micro_batches))]
    total, extra = 0.0, {}
    for j, (batch, key) in enumerate(zip(micro_batches, keys)):
        torch.manual_seed(rng_seed(*key, 2))
        with _exchange_gradients(model, j == len(keys) - 1):
            with autocast():
                loss, logs = loss_fn(model, batch, rng(*key, 1))
            (loss / len(micro_batches)).backward()
        total += loss.item() / len(micro_batches)
        for k, v in logs.items():
            extra[k] = extra.get(k, 0.0) + v / len(micro_batches)
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip_grad or float("inf"))
    if isinstance(norm, DTensor):  # FSDP: the norm over every shard
        norm = norm.full_tensor()
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        raise FloatingPointError(f"the gradients became {norm.item()} (loss {total:.4g})")
    if before_update is not None:
        before_update()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total, extra


def _exchange_gradients(model: nn.Module, last: bool):
    """A context for one micro-batch's backward: gradients are exchanged between processes on the last one only."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def _to(batch, device: torch.device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _grouped(loader, n: int):
    """Consecutive groups of n micro-batches: one optimiser step each."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []


# ---- the run ------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, model: nn.Module | None = None, resume: bool = False, overwrite: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Train as `cfg` says; resume=True continues runs/<name>/last.safetensors exactly.

    model: train this module instead of building cfg.model (it must take the data's images and classes; its
    checkpoints record cfg.model as the name to rebuild it from). log: where the run log goes (default: the
    terminal, above the progress bar)."""
    say = log or tqdm.write
    run_dir = cfg.run_dir
    last_path = run_dir / "last.safetensors"
    ckpt = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"nothing to resume: {last_path} does not exist; start the run without --resume")
        ckpt = load_checkpoint(last_path)
        cfg = resume_config(TrainConfig(**ckpt.train["config"]), cfg)
    elif last_path.exists() and not overwrite:
        raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start it "
                             f"again, or --name to choose another folder")
    kind = get_objective(objective_name(cfg))
    init = kind.read_init(cfg) if cfg.init else None  # on resume too: it fixes the architecture
    cfg = resolve(cfg, embedded=cfg.data in EMBEDDED, init_model=kind.model_of(init) if init else None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    procs = Processes.start(device)
    try:
        return _run(cfg, model, ckpt, init, overwrite, device, procs, on_epoch_end, say)
    finally:
        procs.stop()


def _run(cfg, model, ckpt, init, overwrite, device, procs, on_epoch_end, say) -> RunResult:
    run_dir, main = cfg.run_dir, procs.is_main
    if not main:
        say = lambda *_: None  # noqa: E731  (rank 0 speaks for every process)
    paths = {k: run_dir / f"{k}.safetensors" for k in ("last", "best", "ema")}
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for orphan in remove_orphans(run_dir):
            say(f"removed {orphan.name}, left by a write that was killed")
        if overwrite and ckpt is None:
            clear_run(run_dir)
    procs.barrier()

    torch.manual_seed(cfg.seed)  # the initial weights
    objective: Objective = get_objective(cfg.objective)(cfg, device, say, init)
    model = (model if model is not None else objective.build_model()).to(device).train()
    if cfg.freeze == "backbone":
        trained = freeze_backbone(model)
        say(f"backbone frozen: training {', '.join(trained)} only")
    ema = WeightEma(model, cfg.ema) if cfg.ema else None
    weights = spread(cfg.fsdp, procs, device)  # replicated (DDP under torchrun) or sharded (FSDP2)
    net = weights.wrap(model, ema.module if ema else None)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, kind=cfg.optimizer, layer_decay=cfg.layer_decay)
    micro = cfg.accum_steps or procs.world
    plan = EpochPlan(len(objective.train_set), cfg.batch_size, micro, procs.rank, procs.world, cfg.seed, 0)
    total_steps, warmup_steps = cfg.epochs * plan.steps, round(cfg.warmup_epochs * plan.steps)
    val_loader = DataLoader(objective.val_set, num_workers=cfg.num_workers,
                            batch_sampler=EvalShards(len(objective.val_set), plan.micro_size, procs.rank, procs.world))
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,  # noqa: E731
                                      enabled=cfg.amp and device.type == "cuda")

    sign = 1.0 if objective.higher_is_better else -1.0
    start_epoch, step, best, best_epoch = 0, 0, -sign * float("inf"), 0
    if ckpt is not None:
        weights.load_state(model, ckpt.state)
        weights.load_optimizer(model, opt, ckpt.train_tensors, ckpt.train["optim_groups"])
        if ema is not None:
            weights.load_state(ema.module, {k[4:]: v for k, v in ckpt.train_tensors.items() if k.startswith("ema.")})
        objective.load_state_tensors({k[4:]: v for k, v in ckpt.train_tensors.items() if k.startswith("obj.")})
        t = ckpt.train
        start_epoch, step, best, best_epoch = t["epoch"], t["step"], t["best_score"], t["best_epoch"]
        if main:
            write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch])
        say(f"resuming {run_dir} after epoch {start_epoch}/{cfg.epochs}")
    else:
        n_params = sum(p.numel() for p in model.parameters())
        say(f"training {cfg.model} ({n_params:,} parameters), objective {cfg.objective}, on {cfg.data}: "
            f"{objective.describe()}; {cfg.epochs} epochs of {plan.steps} steps ({cfg.batch_size} samples each, "
            f"{micro} micro-batch(es) of {plan.micro_size}) on {device}"
            + (f", {procs.world} processes" + (" (FSDP2)" if cfg.fsdp else " (DDP)") if procs.world > 1 else ""))
    if main:
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    writer = _tensorboard(run_dir) if cfg.tensorboard and main else None

    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", dynamic_ncols=True,
               disable=None if cfg.progress and main else True)  # None: only on a terminal
    started, last_plot = time.time(), 0.0
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        net.train()
        plan = dataclasses.replace(plan, epoch=epoch)
        loader = DataLoader(objective.train_set, batch_sampler=plan, num_workers=cfg.num_workers)
        sums, data_s, waited = {}, 0.0, time.perf_counter()
        for i, micro_batches in enumerate(_grouped(loader, plan.local_micro)):
            data_s += time.perf_counter() - waited  # the loop stood waiting for the loader
            lr = cfg.lr * lr_factor(step, total_steps, warmup_steps, cfg.min_lr_ratio, cfg.schedule)
            set_lr(opt, lr)
            if cfg.weight_decay_end is not None:
                set_weight_decay(opt, cosine(step, total_steps, cfg.weight_decay, cfg.weight_decay_end))
            objective.begin_step(step, total_steps, plan.steps)
            keys = [plan.micro_key(i, j) for j in plan.local_indices(i)]
            try:
                loss, extra = optimizer_step(net, opt, objective.loss, [_to(b, device) for b in micro_batches],
                                             keys, clip_grad=cfg.clip_grad, autocast=autocast,
                                             before_update=lambda: objective.before_update(model))
            except FloatingPointError as e:
                raise FloatingPointError(f"{e} at epoch {epoch + 1}, step {step}; nothing of this epoch was saved, "
                                         f"so {paths['last'].name} still holds epoch {epoch}. Lower --lr (now "
                                         f"{cfg.lr}) or keep --clip-grad on") from None
            objective.end_step(model, procs)
            if ema is not None:
                ema.update(model)
            step += 1
            for k, v in {"train_loss": loss, **extra}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss:.3f}")
            waited = time.perf_counter()
        train_s = time.time() - t0
        if not weights.all_finite(model):
            raise FloatingPointError(f"the weights became non-finite during epoch {epoch + 1}; it was not saved, so "
                                     f"{paths['last'].name} still holds epoch {epoch}. Lower --lr (now {cfg.lr})")

        figures = objective.evaluate(model, val_loader, procs)
        if ema is not None:
            figures.update({f"ema_{k}": v for k, v in objective.evaluate(ema.module, val_loader, procs).items()
                            if not k.startswith("teacher")})
        means = procs.all_reduce(torch.tensor(list(sums.values()), dtype=torch.float64)) / (plan.steps * procs.world)
        row = {"epoch": epoch + 1, **dict(zip(sums, means.tolist())), **figures, "lr": lr,
               "epoch_s": round(time.time() - t0, 3), "train_s": round(train_s, 3), "data_s": round(data_s, 3),
               "elapsed_s": round(time.time() - started, 3)}
        score = figures[objective.score]
        improved = sign * score > sign * best
        if improved:
            best, best_epoch = score, epoch + 1
        state = weights.full_state(model)  # full tensors (gathered under FSDP: every process takes part)
        ema_state = weights.full_state(ema.module) if ema is not None else {}
        tensors, groups = weights.optimizer_state(model, opt)
        if main:
            append_metrics(metrics_path, row)
            meta = dict(model_name=objective.model_name, overrides=objective.model_overrides)
            if improved:
                save_checkpoint(paths["best"], state=state, **meta, data={**objective.record, "epoch": epoch + 1,
                                                                          objective.score: score})
            if ema is not None:
                save_checkpoint(paths["ema"], state=ema_state, **meta,
                                data={**objective.record, "epoch": epoch + 1, "ema_decay": cfg.ema})
            tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
            tensors.update({f"obj.{k}": v for k, v in objective.state_tensors().items()})
            save_checkpoint(paths["last"], state=state, **meta, data=objective.record, train_tensors=tensors,
                            train={"config": dataclasses.asdict(cfg), "epoch": epoch + 1, "step": step,
                                   "best_score": best, "best_epoch": best_epoch, "score": objective.score,
                                   "optim_groups": groups})
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            if time.time() - last_plot > PLOT_EVERY_S or epoch + 1 == cfg.epochs:
                plot_metrics(read_metrics(metrics_path), run_dir / "metrics.png")
                last_plot = time.time()
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_loss", "val_", "ema_val_acc")))
        say(f"epoch {epoch + 1:3d}/{cfg.epochs}  {shown}  ({row['epoch_s']:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(row)
        procs.barrier()
    bar.close()
    if writer is not None:
        writer.close()
    rows = read_metrics(metrics_path) if main else []
    if main and rows and not (run_dir / "metrics.png").exists():
        plot_metrics(rows, run_dir / "metrics.png")
    if main:
        objective.finish(model, run_dir)
    say(f"best {objective.score} {best:.4f} (epoch {best_epoch}); run saved in {run_dir}")
    return RunResult(run_dir, best, rows, model)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(str(run_dir / "tensorboard"))
