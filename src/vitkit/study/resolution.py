"""resolution: a ViT trained at 28×28 (a 7×7 patch grid), evaluated at another size without retraining, its
position embeddings fitted to the new grid three ways:

    interpolate   2-D bicubic resampling of the 7×7 grid (vitkit.layers.resample_abs_pos_embed, as timm)
    naive 2-D     the 7×7 embeddings kept at their places from the top-left corner: cropped to a smaller grid,
                  or padded with zeros to a larger one
    naive 1-D     the flat sequence of 49 cut to the new count, or padded with zeros at its end: rows shift
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..layers import resample_abs_pos_embed
from ..registry import create_model
from .common import Context, Findings, Study, figure, fmt, mean, register
from .data import accuracy, best_model, held_out

MODEL = "vit_pico_patch4_28"
PATCH, GRID = 4, 7
VARIANTS = ("interpolate", "naive 2-D", "naive 1-D")


def fit_positions(pos: Tensor, grid: int, how: str) -> Tensor:
    """pos (1, 1 + 7·7, D) → (1, 1 + grid², D) by `how` (one of VARIANTS); [CLS]'s embedding is kept."""
    cls, patches = pos[:, :1], pos[:, 1:]  # (1, 1, D), (1, 49, D)
    D = pos.shape[-1]
    if how == "interpolate":
        return resample_abs_pos_embed(pos, (grid, grid), (GRID, GRID), num_prefix_tokens=1)
    if how == "naive 2-D":
        old = patches.reshape(GRID, GRID, D)
        new = torch.zeros(grid, grid, D, dtype=pos.dtype)
        k = min(grid, GRID)
        new[:k, :k] = old[:k, :k]  # crop, or pad with zeros right and below
        return torch.cat([cls, new.reshape(1, grid * grid, D)], dim=1)
    if how == "naive 1-D":
        flat = torch.zeros(1, grid * grid, D, dtype=pos.dtype)
        k = min(grid * grid, GRID * GRID)
        flat[:, :k] = patches[:, :k]
        return torch.cat([cls, flat], dim=1)
    raise ValueError(f"unknown way {how!r}; one of {', '.join(VARIANTS)}")


def at_size(model, size: int, how: str):
    """The trained model rebuilt for size×size images, its position embeddings fitted by `how`."""
    state = dict(model.state_dict())
    state["pos_embed"] = fit_positions(state["pos_embed"], size // PATCH, how)
    out = create_model(MODEL, img_size=size, num_classes=model.num_classes, in_chans=1)
    out.load_state_dict(state)
    return out.eval()


def run(ctx: Context) -> Findings:
    seeds = ctx.pick([0, 1, 2], [0])
    sizes = ctx.pick([20, 40, 48], [40])
    epochs, train_size = ctx.pick(10, 4), ctx.pick(None, 1000)
    acc: dict = {}  # acc[seed][f"{size}"][variant]
    for seed in seeds:
        result = ctx.train(f"vit-seed{seed}", model=MODEL, data="mnist", train_size=train_size, epochs=epochs,
                           warmup_epochs=ctx.pick(3, 1), seed=seed)
        model, record = best_model(result.run_dir)
        _, x, y = held_out(record)
        acc[seed] = {"28": {"native": accuracy(model, x, y)}}
        for size in sizes:
            _, xs, ys = held_out(record, img_size=size)
            acc[seed][str(size)] = {how: accuracy(at_size(model, size, how), xs, ys) for how in VARIANTS}
        ctx.log(f"  seed {seed}: {acc[seed]}")
    means = {str(size): {how: mean(acc[s][str(size)][how] for s in seeds) for how in VARIANTS} for size in sizes}
    margins = {str(size): [acc[s][str(size)]["interpolate"] - max(acc[s][str(size)][h] for h in VARIANTS[1:])
                           for s in seeds] for size in sizes}
    figures = {"per_seed": {str(s): v for s, v in acc.items()}, "means": means, "sizes": sizes,
               "native_mean": mean(acc[s]["28"]["native"] for s in seeds), "margins": margins,
               "margin_means": {k: mean(v) for k, v in margins.items()}}
    _plot(ctx, sizes, means, figures["native_mean"])
    rows = [["28 (trained)", f"{GRID}×{GRID}", figures["native_mean"], "", "", ""]]
    rows += [[str(size), f"{size // PATCH}×{size // PATCH}", "", *[means[str(size)][h] for h in VARIANTS]]
             for size in sizes]
    header = ["eval size (px)", "patch grid", "native", *VARIANTS]
    big = str(max(sizes))
    headline = (f"at {big}×{big}: interpolated {fmt(means[big]['interpolate'])}, naive 2-D "
                f"{fmt(means[big]['naive 2-D'])}, naive 1-D {fmt(means[big]['naive 1-D'])} "
                f"(native 28×28: {fmt(figures['native_mean'])})")
    setup = [f"{MODEL} trained at 28×28 on MNIST ({'4,000' if train_size is None else train_size} images), "
             f"{epochs} epochs, one run per seed; its best checkpoint is evaluated without retraining",
             f"the 1,000 held-out images resized (bilinear, antialiased) to {', '.join(map(str, sizes))} px: "
             f"patch grids of {', '.join(f'{s // PATCH}×{s // PATCH}' for s in sizes)}",
             "interpolate: 2-D bicubic (resample_abs_pos_embed); naive 2-D: top-left crop or zero padding of the "
             "7×7 grid; naive 1-D: the flat sequence cut or zero-padded at its end"]
    notes = ["Every variant also changes the digit's size in pixels relative to a patch, which costs accuracy on "
             "its own; the comparison between the three fittings at one size holds that fixed."]
    return Findings(setup, seeds, figures, headline, (header, rows), notes)


def _plot(ctx: Context, sizes, means, native: float) -> None:
    fig = figure(6, 3.8)
    ax = fig.subplots()
    width = 0.25
    for j, how in enumerate(VARIANTS):
        ax.bar([i + (j - 1) * width for i in range(len(sizes))], [means[str(s)][how] for s in sizes], width,
               label=how)
    ax.axhline(native, color="k", ls="--", lw=1, label="native 28×28")
    ax.set_xticks(range(len(sizes)), [f"{s}×{s} ({s // PATCH}×{s // PATCH} grid)" for s in sizes])
    ax.set(ylabel="val_acc (mean of seeds)", ylim=(0, 1), title="trained at 28×28, evaluated at another size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save(fig, "resolution.png", "accuracy at each evaluation size for each way of fitting the position "
                                    "embeddings (mean of seeds)")


MIN_MARGIN = 0.02


def decide(f: dict) -> tuple[str, str]:
    wins = {size: all(m >= MIN_MARGIN for m in ms) for size, ms in f["margins"].items()}
    why = "; ".join(f"at {size} px interpolation beat the better naive fitting by {f['margin_means'][size]:+.3f}"
                    for size in f["margins"])
    if all(wins.values()):
        return "held", why
    if any(wins.values()) or any(m >= MIN_MARGIN for m in f["margin_means"].values()):
        return "partly", why
    return "did not hold", why


register(Study(
    name="resolution",
    claim="At a new resolution, position embeddings must be interpolated in 2-D; cropping or padding them naively "
          "costs accuracy.",
    rule="held if, at every evaluation size and on every seed, interpolation beats the better of the two naive "
         "fittings by at least 0.02 val_acc; partly if it does so at some size, or on the mean at some size; did "
         "not hold otherwise.",
    run=run, decide=decide,
    needed="If the naive fittings cost little, the model leans little on its position embeddings (MNIST digits "
           "are recognisable from an unordered set of strokes); a task that needs position (see the "
           "position-embeddings study) would show the cost more.",
    minutes="6",
))
