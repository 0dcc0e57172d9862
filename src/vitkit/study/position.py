"""position-embeddings: (1) with against without, on a task that needs spatial order: 2×2 grids of MNIST digits
labelled by the top-left one (data.quadrants); without position embeddings the ViT sees its patches as a set and
cannot tell which digit is top left. (2) The 2-D structure of the learned embeddings: the correlation between two
positions' cosine similarity (vitkit.explain.pos_embed_similarity) and their distance on the patch grid.
"""
from __future__ import annotations

import torch

from ..explain import pos_embed_similarity
from ..explain.plots import plot_pos_embed_similarity
from ..layers import sincos_2d
from ..registry import create_model
from .common import Context, Findings, Study, correlation, figure, fmt, mean, register
from .data import FOLDER_AS_EMBEDDED, best_model, quadrants, write_folder

MODEL = "vit_pico_patch4_28"
ARMS = {"learned": "learn", "none": "none"}  # arm → ViTConfig.pos_embed


def grid_correlation(sim: torch.Tensor) -> float:
    """Pearson correlation, over every pair of distinct positions, between cosine similarity and the pairs'
    Euclidean distance on the grid. sim: (Gh, Gw, Gh, Gw). Strongly negative: near positions are alike."""
    Gh, Gw = sim.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(Gh), torch.arange(Gw), indexing="ij")
    pts = torch.stack([rows.flatten(), cols.flatten()], dim=-1).double()  # (M, 2)
    dist = torch.cdist(pts, pts)  # (M, M)
    s = sim.reshape(Gh * Gw, Gh * Gw).double()
    off = ~torch.eye(Gh * Gw, dtype=torch.bool)
    return correlation(dist[off].tolist(), s[off].tolist())


def run(ctx: Context) -> Findings:
    seeds = ctx.pick([0, 1, 2], [0])
    count, epochs = ctx.pick(5000, 1500), ctx.pick(12, 4)
    images, labels = quadrants(count, seed=0)
    folder = write_folder(images, labels, [str(c) for c in range(10)], ctx.out_dir / "data" / "quadrants")
    acc, corr, corr_init = {a: {} for a in ARMS}, {}, {}
    sim0 = None
    for seed in seeds:
        for arm, kind in ARMS.items():
            result = ctx.train(f"{arm}-seed{seed}", model=MODEL, data=str(folder), img_size=28, epochs=epochs,
                               warmup_epochs=ctx.pick(3, 1), seed=seed, model_overrides={"pos_embed": kind},
                               **FOLDER_AS_EMBEDDED)
            acc[arm][seed] = result.best_score
            if kind == "learn":
                model, _ = best_model(result.run_dir)
                sim = pos_embed_similarity(model)
                corr[seed] = grid_correlation(sim)
                sim0 = sim if sim0 is None else sim0
                torch.manual_seed(seed)
                corr_init[seed] = grid_correlation(pos_embed_similarity(create_model(MODEL, img_size=28)))
    sincos = sincos_2d(7, 7, 64)  # (49, D): the fixed 2-D sin-cos embeddings, for reference
    e = torch.nn.functional.normalize(sincos.double(), dim=-1)
    corr_sincos = grid_correlation((e @ e.T).reshape(7, 7, 7, 7))
    gaps = [acc["learned"][s] - acc["none"][s] for s in seeds]
    figures = {"val_acc_learned": [acc["learned"][s] for s in seeds], "val_acc_none": [acc["none"][s] for s in seeds],
               "gaps": gaps, "gap_mean": mean(gaps), "learned_mean": mean(acc["learned"].values()),
               "none_mean": mean(acc["none"].values()), "chance": 0.1,
               "correlation": [corr[s] for s in seeds], "correlation_mean": mean(corr.values()),
               "correlation_random_init": [corr_init[s] for s in seeds], "correlation_sincos": corr_sincos}
    ctx.save(plot_pos_embed_similarity(sim0), "pos_embed_similarity.png",
             f"cosine similarity of each learned position embedding to every other (seed {seeds[0]}; tile (i, j) is "
             f"position (i, j)); correlation with grid distance {corr[seeds[0]]:.2f}")
    _plot_data(ctx, images[:8], labels[:8])
    _plot_acc(ctx, seeds, acc)
    rows = [[f"seed {s}", acc["learned"][s], acc["none"][s], acc["learned"][s] - acc["none"][s], corr[s],
             corr_init[s]] for s in seeds]
    rows.append(["mean", figures["learned_mean"], figures["none_mean"], figures["gap_mean"],
                 figures["correlation_mean"], mean(corr_init.values())])
    header = ["", "learned position embeddings: best val_acc", "none: best val_acc", "cost of dropping them",
              "corr(similarity, grid distance), learned", "the same at random init"]
    headline = (f"top-left digit of a 2×2 grid: {fmt(figures['learned_mean'])} with position embeddings, "
                f"{fmt(figures['none_mean'])} without; learned embeddings' similarity against grid distance: "
                f"r = {fmt(figures['correlation_mean'], 2)} (random init {fmt(mean(corr_init.values()), 2)}, "
                f"sin-cos {fmt(corr_sincos, 2)})")
    setup = [f"{count:,} images of 28×28: four MNIST digits shrunk to 14×14 in a 2×2 grid (drawn with seed 0); the "
             "label is the top-left digit's class (10 classes, chance 0.1)",
             f"{MODEL} with learned position embeddings against the same with none (pos_embed='none'), "
             f"{epochs} epochs, 20% held out, the trainer's defaults with ±1 px shifts",
             "2-D structure: Pearson r between the cosine similarity of two patch positions' learned embeddings and "
             "their Euclidean distance on the 7×7 grid, over all pairs of distinct positions (the best "
             "checkpoint's)"]
    notes = [f"The fixed 2-D sin-cos embeddings (sincos_2d) give r = {corr_sincos:.2f}: what a built-in 2-D "
             "structure scores on this measure."]
    return Findings(setup, seeds, figures, headline, (header, rows), notes)


def _plot_data(ctx: Context, images, labels) -> None:
    fig = figure(8, 1.4)
    axes = fig.subplots(1, len(images))
    for ax, img, y in zip(axes, images, labels):
        ax.imshow(img[0].numpy(), cmap="gray")
        ax.set_title(f"label {int(y)}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    ctx.save(fig, "quadrant_examples.png", "examples of the task: the label is the top-left digit")


def _plot_acc(ctx: Context, seeds, acc) -> None:
    fig = figure(5, 3.6)
    ax = fig.subplots()
    for j, arm in enumerate(ARMS):
        ys = [acc[arm][s] for s in seeds]
        ax.bar(j, mean(ys), color=f"C{j}", alpha=0.35)
        ax.scatter([j] * len(ys), ys, color=f"C{j}", zorder=3)
    ax.axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(ARMS)), ["learned position embeddings", "none"])
    ax.set(ylabel="best val_acc", ylim=(0, 1), title="top-left digit of a 2×2 grid")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save(fig, "with_without.png", "best validation accuracy with and without position embeddings (one dot per "
                                      "seed, bar: mean)")


MIN_GAP, MAX_CORRELATION = 0.05, -0.3


def decide(f: dict) -> tuple[str, str]:
    cost = f["gap_mean"] >= MIN_GAP and all(g > 0 for g in f["gaps"])
    structure = f["correlation_mean"] <= MAX_CORRELATION
    why = (f"dropping position embeddings cost {f['gap_mean']:.3f} val_acc on average; the learned embeddings' "
           f"similarity correlates with grid distance at r = {f['correlation_mean']:.2f}")
    if cost and structure:
        return "held", why
    if cost or structure:
        return "partly", why
    return "did not hold", why


register(Study(
    name="position-embeddings",
    claim="Position embeddings are needed where the task depends on spatial order, and the learned ones take on "
          "the image's 2-D structure.",
    rule="held if dropping position embeddings costs at least 0.05 val_acc on average and some on every seed, and "
         "the learned embeddings' similarity correlates with grid distance at r ≤ −0.3 (mean of seeds); partly if "
         "one of the two; did not hold otherwise.",
    run=run, decide=decide,
    needed="Learned embeddings start random (r near 0) and take only the structure the task's gradient asks for: "
           "the top-left-digit task asks for little more than 'top-left quadrant or not', and the similarity grid "
           "shows that split rather than a smooth 2-D falloff. A task where every position matters (natural images "
           "at scale, as in the ViT paper), more data and a longer schedule would be needed to see the full "
           "2-D structure.",
    minutes="10",
))
