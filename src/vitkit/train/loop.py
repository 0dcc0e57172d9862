"""The training loop: model-agnostic, configured by a TrainConfig, resumable exactly.

A run lives in runs/<name>/:
    last.safetensors   weights + optimiser + RNG + config after the latest epoch (written atomically)
    best.safetensors   weights of the epoch with the best validation accuracy
    metrics.jsonl      one JSON object per epoch: epoch, train_loss, val_loss, val_acc, val_top5, lr, epoch_s,
                       train_s (the training steps), data_s (of that, time spent waiting for the loader), ...
    metrics.png        loss and accuracy curves, drawn at the end

Exact resume: every source of randomness is either re-derived from (seed, epoch) — the shuffle
order and the augmentation — or saved in the checkpoint — the global RNG that dropout and drop
path draw from. An interrupted run resumed from epoch k ends with the same weights as one that
never stopped (tests/test_train.py shows it).
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import EMBEDDED, EvalTransform, TrainAugment, build_dataset, split
from ..registry import create_model, get_entry, model_config
from ..weights import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import append_metrics, confusion_matrix, plot_metrics, read_metrics, topk_correct, write_metrics
from .optim import lr_factor, make_optimizer


class RunExistsError(FileExistsError):
    pass


@dataclass
class EvalResult:
    loss: float
    top1: float          # fraction correct, 0..1
    top5: float
    confusion: Tensor    # (C, C): row = true class, column = predicted
    count: int


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float
    metrics: list[dict]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu")
    return torch.device(name)


# ---- data ---------------------------------------------------------------------------------------------
def prepare_data(cfg: TrainConfig) -> tuple[Dataset, Dataset, dict]:
    """The train and validation splits, and the data description stored in checkpoints."""
    mcfg = model_config(cfg.model, **cfg.model_overrides)
    if cfg.data in EMBEDDED:
        dataset = build_dataset(cfg.data, img_size=cfg.img_size)
    else:
        dataset = build_dataset(cfg.data, img_size=cfg.img_size or mcfg.img_size, in_chans=mcfg.in_chans)
    c, h, w = dataset[0][0].shape
    mean, std = get_entry(cfg.model).mean, get_entry(cfg.model).std
    if len(mean) != c:
        mean, std = (0.5,) * c, (0.5,) * c
    train_set, val_set = split(dataset, cfg.val_fraction, cfg.seed)
    data = {"source": cfg.data, "classes": list(dataset.classes), "img_size": [h, w], "in_chans": c,
            "mean": list(mean), "std": list(std), "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    return train_set, val_set, data


def model_overrides(cfg: TrainConfig, data: dict) -> dict:
    """The create_model options that fit the model to the data."""
    h, w = data["img_size"]
    over = {**cfg.model_overrides, "num_classes": len(data["classes"]), "in_chans": data["in_chans"],
            "img_size": h if h == w else (h, w)}
    if cfg.drop_path:
        over["drop_path_rate"] = cfg.drop_path
    return over


def _loader(ds: Dataset, cfg: TrainConfig, shuffle: bool, epoch: int = 0) -> DataLoader:
    """Shuffle order is a function of (seed, epoch) alone, so a resumed run sees the same batches.
    (For torchrun DDP, a DistributedSampler with set_epoch(epoch) slots in here.)"""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, generator=gen if shuffle else None,
                      num_workers=cfg.num_workers, persistent_workers=False)


# ---- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, transform: Callable[[Tensor], Tensor], num_classes: int,
             device: torch.device, amp: bool = False) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of `model` over `loader`."""
    model.eval()
    loss_sum, hits, conf, n = 0.0, {1: 0, 5: 0}, torch.zeros(num_classes, num_classes, dtype=torch.long), 0
    for images, labels in loader:
        images, labels = transform(images.to(device)), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        for k, v in topk_correct(logits, labels).items():
            hits[k] += v
        conf += confusion_matrix(logits.argmax(1).cpu(), labels.cpu(), num_classes)
        n += len(labels)
    if n == 0:
        raise ValueError("the validation split is empty; use more data or a larger --val-fraction")
    return EvalResult(loss_sum / n, hits[1] / n, hits[5] / n, conf, n)


# ---- checkpoint state ---------------------------------------------------------------------------------
def _train_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimiser and RNG state as tensors (for safetensors) plus JSON-able parts."""
    state = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    extra = {"optim_groups": state["param_groups"],
             "rng_python": random.getstate(),
             "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, extra


def _restore_train_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], train: dict) -> None:
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": train["optim_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = train["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = train["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---- the loop -----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> RunResult:
    """Train `cfg.model` on `cfg.data`; resume=True continues runs/<name>/last.safetensors exactly."""
    run_dir = Path(cfg.runs_dir) / cfg.run_name
    last_path, best_path, metrics_path = run_dir / "last.safetensors", run_dir / "best.safetensors", run_dir / "metrics.jsonl"

    ckpt = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"nothing to resume: {last_path} does not exist; start the run without --resume")
        ckpt = load_checkpoint(last_path)
        saved = TrainConfig(**ckpt.train["config"])
        # Everything that shapes the result comes from the checkpoint; only how it runs may change.
        cfg = dataclasses.replace(saved, device=cfg.device, progress=cfg.progress, num_workers=cfg.num_workers,
                                  runs_dir=cfg.runs_dir)
    elif last_path.exists() and not overwrite:
        raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start it "
                             f"again, or --name to choose another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)

    torch.manual_seed(cfg.seed)
    train_set, val_set, data = prepare_data(cfg)
    overrides = model_overrides(cfg, data)
    model = create_model(cfg.model, **overrides).to(device)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    augment = TrainAugment(tuple(data["img_size"]), cfg.crop_padding, cfg.hflip, data["mean"], data["std"])
    to_input = EvalTransform(tuple(data["img_size"]), data["mean"], data["std"])
    steps_per_epoch = len(_loader(train_set, cfg, shuffle=True))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    start_epoch, step, best_acc = 0, 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt.state, strict=True)
        _restore_train_state(opt, ckpt.train_tensors, ckpt.train)
        start_epoch, step, best_acc = ckpt.train["epoch"], ckpt.train["step"], ckpt.train["best_val_acc"]
        write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch])
        log(f"resuming {run_dir} after epoch {start_epoch}/{cfg.epochs}")
    else:
        metrics_path.unlink(missing_ok=True)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {len(train_set)} train / "
            f"{len(val_set)} val images, {len(data['classes'])} classes, {cfg.epochs} epochs on {device}")
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    started = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        aug_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # CPU: draws offsets, not pixels
        loss_sum, seen = 0.0, 0
        bar = tqdm(_loader(train_set, cfg, shuffle=True, epoch=epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if cfg.progress else True, leave=False, dynamic_ncols=True)  # None: off when not a TTY
        data_s, waited = 0.0, time.perf_counter()
        for images, labels in bar:
            data_s += time.perf_counter() - waited  # the loop stood waiting for the loader
            images, labels = augment(images.to(device, non_blocking=True), generator=aug_gen), labels.to(device)
            lr = cfg.lr * lr_factor(step, total_steps, warmup_steps, cfg.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                loss = F.cross_entropy(model(images).float(), labels, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                                         f"lower --lr (now {cfg.lr}) or keep --clip-grad on")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            waited = time.perf_counter()
        train_s = time.time() - t0

        val = evaluate(model, _loader(val_set, cfg, shuffle=False), to_input, len(data["classes"]), device, cfg.amp)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_loss": val.loss, "val_acc": val.top1,
               "val_top5": val.top5, "lr": lr, "epoch_s": round(time.time() - t0, 3), "train_s": round(train_s, 3),
               "data_s": round(data_s, 3),
               "elapsed_s": round(time.time() - started, 3)}
        append_metrics(metrics_path, row)
        improved = val.top1 > best_acc
        best_acc = max(best_acc, val.top1)
        tensors, extra = _train_tensors(opt)
        train_meta = {"config": dataclasses.asdict(cfg), "epoch": epoch + 1, "step": step, "best_val_acc": best_acc,
                      **extra}
        save_checkpoint(last_path, model=model, model_name=cfg.model, overrides=overrides, data=data,
                        train=train_meta, train_tensors=tensors)
        if improved:
            save_checkpoint(best_path, model=model, model_name=cfg.model, overrides=overrides,
                            data={**data, "epoch": epoch + 1, "val_acc": val.top1})
        log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  val_loss {val.loss:.4f}  "
            f"val_acc {val.top1:.4f}  top5 {val.top5:.4f}  ({row['epoch_s']:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(row)

    rows = read_metrics(metrics_path)
    if rows:
        plot_metrics(rows, run_dir / "metrics.png")
    log(f"best val_acc {best_acc:.4f}; run saved in {run_dir}")
    return RunResult(run_dir, best_acc, rows)
