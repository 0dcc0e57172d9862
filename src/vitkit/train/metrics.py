"""Evaluation figures and the per-epoch record of a run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..weights.io import atomic_write


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many of the labels are among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, kmax)
    hit = top == labels[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (a kill mid-write) is skipped with a warning; a bad line
    anywhere else is an error that names the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines):
                warnings.warn(f"{path}: line {n} is incomplete (the run was killed while writing it); it is skipped")
                continue
            raise ValueError(f"{path}: line {n} is not JSON ({e}); repair or delete that line") from e
    return rows


def write_metrics(path: str | Path, rows: list[dict]) -> None:
    """Replace the file with `rows` in one step (never rewritten in place)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def append_metrics(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


LABELS = {"val_acc": "top-1", "ema_val_acc": "top-1, EMA weights", "val_top5": "top-5", "ema_val_top5": "top-5, EMA",
          "val_mse": "masked-patch MSE", "val_mse_patch_mean": "guess: each patch's own mean",
          "val_mse_mean_image": "guess: the mean training image",
          "ema_val_mse": "masked-patch MSE, EMA weights"}


def plot_metrics(rows: list[dict], out: str | Path) -> Path:
    """Loss (train and val), the validation figures and the learning rate against epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in rows], label="train")
    if "val_loss" in rows[-1]:
        ax1.plot(epochs, [r.get("val_loss") for r in rows], label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    figures = [k for k in rows[-1] if k.startswith(("val_", "ema_val_")) and not k.endswith("_loss")]
    for key in figures:  # the objective's own: accuracies for classification, the MSE and its baseline for MAE
        ax2.plot(epochs, [r.get(key) for r in rows], label=LABELS.get(key, key))
    accuracies = all(k.endswith(("_acc", "_top5")) for k in figures)
    ax2.set(xlabel="epoch", ylabel="accuracy" if accuracies else "", title="validation")
    if accuracies:
        ax2.set_ylim(0, 1)
    if figures:
        ax2.legend(loc="lower right" if accuracies else "best", fontsize=8)
    ax3.plot(epochs, [r["lr"] for r in rows], color="tab:purple")
    ax3.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
    ax3.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(out)
