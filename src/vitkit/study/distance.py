"""attention-distance: the ViT paper's Figure 7 (right) on MNIST. Train vit_pico_patch4_28, measure every head's
mean attention distance (vitkit.explain.mean_attention_distance, pixels) on held-out images, and ask whether it
grows with depth (the slope of the per-layer mean over heads) and whether the early layers' heads spread from
local to global more than the last layer's do.
"""
from __future__ import annotations

import torch

from ..explain import mean_attention_distance
from ..explain.plots import plot_attention_distance
from ..registry import create_model
from .common import Context, Findings, Study, figure, fmt, mean, register, slope
from .data import best_model, held_out

MODEL = "vit_pico_patch4_28"
MIN_SLOPE = 0.25      # px per layer: 1.25 px over the 6 layers, about 5% of the 34 px the grid spans
MIN_SPREAD_GAP = 1.0  # px: layer 0's head spread must exceed the last layer's by this much


def per_layer(d: torch.Tensor) -> dict:
    """(L, H) distances → the figures the rule reads."""
    layer_mean = d.mean(dim=1).tolist()
    spread = (d.amax(dim=1) - d.amin(dim=1)).tolist()  # max − min over the heads of each layer
    return {"distances": d.tolist(), "layer_mean": layer_mean, "slope": slope(range(len(layer_mean)), layer_mean),
            "spread_first": spread[0], "spread_last": spread[-1], "spread": spread}


def run(ctx: Context) -> Findings:
    seeds = ctx.pick([0, 1, 2], [0])
    epochs, train_size, n_images = ctx.pick(15, 4), ctx.pick(None, 1000), ctx.pick(500, 64)
    per_seed, random_init = {}, {}
    for seed in seeds:
        result = ctx.train(f"vit-seed{seed}", model=MODEL, data="mnist", train_size=train_size, epochs=epochs,
                           warmup_epochs=ctx.pick(3, 1), seed=seed)
        model, record = best_model(result.run_dir)
        _, x, _ = held_out(record, n_images)
        per_seed[seed] = {**per_layer(mean_attention_distance(model, x)), "val_acc": result.best_score}
        torch.manual_seed(seed)
        untrained = create_model(MODEL, **rebuild_options(model)).eval()
        random_init[seed] = per_layer(mean_attention_distance(untrained, x))
    s0 = seeds[0]
    dist0 = torch.tensor(per_seed[s0]["distances"])
    ctx.save(plot_attention_distance(dist0), "attention_distance.png",
             f"mean attention distance against depth, one dot per head (seed {s0}; "
             f"vitkit.explain.plots.plot_attention_distance)")
    _plot_seeds(ctx, per_seed, random_init)
    slopes = [per_seed[s]["slope"] for s in seeds]
    figures = {
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "random_init": {str(s): v for s, v in random_init.items()},
        "slopes": slopes, "slope_mean": mean(slopes),
        "spread_first_mean": mean(per_seed[s]["spread_first"] for s in seeds),
        "spread_last_mean": mean(per_seed[s]["spread_last"] for s in seeds),
        "random_init_slope_mean": mean(random_init[s]["slope"] for s in seeds),
        "val_acc_mean": mean(per_seed[s]["val_acc"] for s in seeds),
        "max_distance_px": 24.0 * 2 ** 0.5,  # patch centres 0 … 24 px on a 7×7 grid of 4 px
    }
    L = len(per_seed[s0]["layer_mean"])
    rows = [[f"layer {i}", *[per_seed[s]["layer_mean"][i] for s in seeds],
             mean(per_seed[s]["spread"][i] for s in seeds), mean(random_init[s]["layer_mean"][i] for s in seeds)]
            for i in range(L)]
    rows.append(["slope (px per layer)", *slopes, "", figures["random_init_slope_mean"]])
    header = ["", *[f"mean over heads, seed {s} (px)" for s in seeds], "head spread max−min (mean of seeds, px)",
              "at random init (mean of seeds, px)"]
    headline = (f"slope {fmt(figures['slope_mean'], 2)} px per layer (seeds: {', '.join(fmt(s, 2) for s in slopes)}); "
                f"head spread {fmt(figures['spread_first_mean'], 1)} px in layer 0 against "
                f"{fmt(figures['spread_last_mean'], 1)} px in the last")
    setup = [f"{MODEL} (6 blocks, 4 heads, 4×4 patches: a 7×7 grid) trained on MNIST "
             f"({'4,000' if train_size is None else train_size} training images, the trainer's defaults), "
             f"{epochs} epochs, one run per seed; its best checkpoint is measured",
             f"mean attention distance of every head, in pixels, on the first {n_images} held-out images "
             f"(attention to [CLS] left out and the rest renormalised; the farthest two patches are "
             f"{figures['max_distance_px']:.1f} px apart)",
             "the same network at its random initialisation, measured on the same images, for reference"]
    trained = [d for s in seeds for d in per_seed[s]["layer_mean"]]
    uniform = [d for s in seeds for d in random_init[s]["layer_mean"]]
    notes = [f"best val_acc, mean of seeds: {figures['val_acc_mean']:.3f}",
             f"The untrained network attends almost uniformly: {min(uniform):.1f}–{max(uniform):.1f} px in every "
             f"layer. The trained one's per-layer means range {min(trained):.1f}–{max(trained):.1f} px: the "
             f"distance to compare against is how far each layer moved from uniform, and in which direction."]
    return Findings(setup, seeds, figures, headline, (header, rows), notes)


def rebuild_options(model) -> dict:
    """The create_model options that rebuild `model`'s architecture (its config's data-dependent fields)."""
    cfg = model.cfg
    return {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans, "img_size": cfg.img_size}


def _plot_seeds(ctx: Context, per_seed: dict, random_init: dict) -> None:
    fig = figure(6, 4)
    ax = fig.subplots()
    markers = "os^v"
    for j, (seed, v) in enumerate(per_seed.items()):
        d = torch.tensor(v["distances"])  # (L, H)
        L, H = d.shape
        for h in range(H):
            ax.scatter([i + 0.08 * (j - 1) for i in range(L)], d[:, h].tolist(), s=14, marker=markers[j % 4],
                       color=f"C{h}", label=f"head {h}" if j == 0 else None)
        ax.plot(range(L), v["layer_mean"], color="k", lw=1, alpha=0.6, label="mean over heads" if j == 0 else None)
    ri = [mean(random_init[s]["layer_mean"][i] for s in random_init) for i in range(L)]
    ax.plot(range(L), ri, "k--", lw=1, label="random init (mean)")
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)",
           title=f"every head, seeds {', '.join(map(str, per_seed))} (marker per seed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    ctx.save(fig, "attention_distance_seeds.png", "every head of every seed (colour: head; marker: seed), the "
                                                  "mean over heads, and the untrained network's")


def decide(f: dict) -> tuple[str, str]:
    grows = all(s > MIN_SLOPE for s in f["slopes"])
    grows_on_mean = f["slope_mean"] > MIN_SLOPE
    early_spread = f["spread_first_mean"] > f["spread_last_mean"] + MIN_SPREAD_GAP
    why = (f"slope {f['slope_mean']:.2f} px per layer ({sum(s > MIN_SLOPE for s in f['slopes'])} of "
           f"{len(f['slopes'])} seeds above {MIN_SLOPE}); head spread {f['spread_first_mean']:.1f} px in layer 0 "
           f"against "
           f"{f['spread_last_mean']:.1f} px in the last")
    if grows and early_spread:
        return "held", why
    if grows_on_mean or early_spread:
        return "partly", why
    return "did not hold", why


register(Study(
    name="attention-distance",
    claim="A ViT's mean attention distance grows with depth, and early layers hold both local and global heads "
          "(the ViT paper's Figure 7).",
    rule="held if the slope of the per-layer mean distance against depth is above 0.25 px per layer on every seed "
         "and the head spread (max − min) of layer 0 exceeds the last layer's by more than 1 px (mean of seeds); "
         "partly if only the mean slope is above 0.25 or only the spread holds; did not hold otherwise.",
    run=run, decide=decide,
    needed="The paper's figure is of ViT-L/16 trained on JFT-300M, with 24 layers and 16 heads at 224×224: a 7×7 "
           "grid of 28×28 digits leaves little room between local and global. A larger image (more patches), "
           "more data and a longer schedule are what would show it.",
    minutes="6",
))
