"""wrong-token: the off-by-one where the head reads tokens[:, 1] (the first patch) instead of tokens[:, 0] ([CLS]).

Both arms are vit_pico_patch4_28 with the same data, budget and seeds; the wrong one is the same network whose
pooling reads the first patch token (PatchTokenViT below, trained through train(cfg, model=...)).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..models.vit import VisionTransformer
from ..registry import model_config
from .common import Context, Findings, Study, figure, fmt, mean, register, sd

MODEL = "vit_pico_patch4_28"


class PatchTokenViT(VisionTransformer):
    """The bug: the head reads the first patch token (index num_prefix_tokens) where it should read [CLS]."""

    def pool(self, x: Tensor) -> Tensor:
        """tokens (B, N, D) → (B, D): the token right after the prefix, the top-left patch."""
        return x[:, self.num_prefix_tokens]

    def forward(self, x: Tensor) -> Tensor:
        # the whole last block: the parent computes only the [CLS] output there when the head reads [CLS]
        return self.forward_head(self.forward_features(x))


def run(ctx: Context) -> Findings:
    seeds = ctx.pick([0, 1, 2], [0])
    epochs, train_size = ctx.pick(8, 4), ctx.pick(None, 1000)
    common = dict(model=MODEL, data="mnist", train_size=train_size, epochs=epochs, warmup_epochs=ctx.pick(3, 1))
    acc = {"cls": {}, "patch": {}}
    for seed in seeds:
        acc["cls"][seed] = ctx.train(f"cls-seed{seed}", seed=seed, **common).best_score
        torch.manual_seed(seed)  # the same initial weights as the [CLS] arm's (the trainer seeds before building)
        wrong = PatchTokenViT(model_config(MODEL, num_classes=10, in_chans=1, img_size=28))
        acc["patch"][seed] = ctx.train(f"patch-seed{seed}", module=wrong, seed=seed, **common).best_score
    gaps = [acc["cls"][s] - acc["patch"][s] for s in seeds]
    figures = {"val_acc_cls": [acc["cls"][s] for s in seeds], "val_acc_patch": [acc["patch"][s] for s in seeds],
               "gaps": gaps, "gap_mean": mean(gaps), "gap_sd": sd(gaps),
               "cls_mean": mean(acc["cls"].values()), "patch_mean": mean(acc["patch"].values())}
    fig = figure(5, 3.6)
    ax = fig.subplots()
    for j, (arm, label) in enumerate((("cls", "[CLS] (correct)"), ("patch", "first patch token (bug)"))):
        ys = [acc[arm][s] for s in seeds]
        ax.scatter([j] * len(ys), ys, color=f"C{j}", zorder=3)
        ax.bar(j, mean(ys), color=f"C{j}", alpha=0.35, label=label)
    ax.set_xticks([0, 1], ["[CLS]", "patch token"])
    ax.set(ylabel="best val_acc", title=f"MNIST, {epochs} epochs, seeds {', '.join(map(str, seeds))}")
    lo = min(min(figures["val_acc_cls"]), min(figures["val_acc_patch"]))
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    fig.tight_layout()
    ctx.save(fig, "wrong_token.png", "best validation accuracy of each arm, one dot per seed, bar: mean")
    rows = [[f"seed {s}", acc["cls"][s], acc["patch"][s], acc["cls"][s] - acc["patch"][s]] for s in seeds]
    rows.append(["mean (sd)", figures["cls_mean"], figures["patch_mean"],
                 f"{figures['gap_mean']:.4f} ({figures['gap_sd']:.4f})"])
    header = ["", "head reads [CLS]: best val_acc", "head reads first patch: best val_acc", "cost ([CLS] − patch)"]
    headline = (f"[CLS] {fmt(figures['cls_mean'])} against first patch {fmt(figures['patch_mean'])}: a cost of "
                f"{fmt(figures['gap_mean'])} (sd {fmt(figures['gap_sd'])}) in val_acc")
    setup = [f"{MODEL} on MNIST ({'4,000' if train_size is None else train_size} training images, 1,000 held out), "
             f"{epochs} epochs, the trainer's defaults; both arms start from the same initial weights per seed",
             "the bug: forward_head pools tokens[:, 1] (the top-left patch, blank on most digits) instead of "
             "tokens[:, 0]; the patch token still attends to every token in all 6 blocks"]
    notes = []
    if figures["gap_sd"] > abs(figures["gap_mean"]):
        notes.append(f"The seed-to-seed spread of the gap (sd {figures['gap_sd']:.3f}) is larger than the gap itself: "
                     f"at this budget the two heads are not told apart, and more seeds or longer runs would be "
                     f"needed to measure a cost this small.")
    return Findings(setup, seeds, figures, headline, (header, rows), notes)


MIN_GAP = 0.01  # one point of accuracy


def decide(f: dict) -> tuple[str, str]:
    why = (f"reading the first patch cost {f['gap_mean']:.4f} val_acc on average (seeds: "
           f"{', '.join(f'{g:+.4f}' for g in f['gaps'])})")
    if f["gap_mean"] >= MIN_GAP and all(g > 0 for g in f["gaps"]):
        return "held", why
    if f["gap_mean"] > MIN_GAP / 2:
        return "partly", why
    return "did not hold", why


register(Study(
    name="wrong-token",
    claim="Reading a patch token instead of [CLS] (an off-by-one) silently trains on one patch's representation, "
          "and costs accuracy.",
    rule="held if the [CLS] head beats the patch-token head on every seed and by at least 0.01 val_acc on average; "
         "partly if the mean gap is above 0.005; did not hold otherwise.",
    run=run, decide=decide,
    needed="Through six blocks of global attention a patch token can gather the whole image, as [CLS] does, so on "
           "a task this small the bug may cost little: it is silent in both senses. A cost would show with fewer "
           "blocks (depth 1–2, where the read token has had little chance to gather), or a task where the read "
           "patch's own content misleads.",
    minutes="8",
))
