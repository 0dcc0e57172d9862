"""filters: the principal components of a ViT's patch-embedding filters (the ViT paper's Figure 7, left), for a
model trained on crops of photographs, next to the same model at random initialisation.

Data: 32×32 grayscale crops of scikit-learn's two sample photos (china, flower), each photo cut into a 4×4 grid
of regions; the class is the region a crop came from (32 classes), so telling them apart takes texture and edges.
Model: vit_pico with 8×8 patches (a 4×4 token grid), so each filter is 8×8 = 64 pixels.

How edge-like a component is: the share of its energy (squared norm) in the span of oriented first and second
derivatives of a Gaussian (8 orientations, σ 1 and 2 px, centred on the patch): 1 for a pure oriented-gradient
filter, about rank/64 for white noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..explain import patch_embed_filters
from ..explain.plots import plot_filters
from ..registry import create_model
from .common import Context, Findings, Study, fmt, mean, register
from .data import FOLDER_AS_EMBEDDED, best_model, photos_gray, random_crops, write_folder

MODEL, SIZE, PATCH, REGIONS, K = "vit_pico_patch4_28", 32, 8, 4, 16
OVERRIDES = {"img_size": SIZE, "patch_size": PATCH}


def oriented_gradient_basis(p: int = PATCH, sigmas=(1.0, 2.0), orientations: int = 8) -> torch.Tensor:
    """An orthonormal basis (r, p·p) of the span of oriented Gaussian-derivative filters on a p×p patch."""
    c = (p - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(p, dtype=torch.float64) - c, torch.arange(p, dtype=torch.float64) - c,
                            indexing="ij")
    bank = []
    for s in sigmas:
        g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * s * s))
        for i in range(orientations):
            t = math.pi * i / orientations
            u = xx * math.cos(t) + yy * math.sin(t)  # the coordinate across the edge
            bank.append((u * g).flatten())                        # first derivative: a step edge
            bank.append(((u * u / (s * s) - 1) * g).flatten())    # second derivative: a bar
    u, sv, _ = torch.linalg.svd(torch.stack(bank).T, full_matrices=False)  # (p·p, n)
    rank = int((sv > sv[0] * 1e-6).sum())
    return u[:, :rank].T  # (r, p·p), orthonormal rows


def edge_share(components: torch.Tensor, basis: torch.Tensor) -> list[float]:
    """components (k, C, p, p) → each one's share of energy in the span of `basis` (summed over channels)."""
    flat = components.double().reshape(components.shape[0], components.shape[1], -1)  # (k, C, p·p)
    inside = (flat @ basis.T).pow(2).sum(dim=(1, 2))  # (k,)
    return (inside / flat.pow(2).sum(dim=(1, 2)).clamp_min(1e-12)).tolist()


def photo_regions(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """count crops (SIZE×SIZE) spread evenly over the REGIONS×REGIONS regions of each photo, labelled by region."""
    rng = np.random.RandomState(seed)
    images, labels, classes = [], [], []
    photos = photos_gray()
    per = max(1, count // (len(photos) * REGIONS * REGIONS))
    for pi, (name, photo) in enumerate(zip(("china", "flower"), photos)):
        _, H, W = photo.shape
        for r in range(REGIONS):
            for c in range(REGIONS):
                region = photo[:, r * H // REGIONS:(r + 1) * H // REGIONS, c * W // REGIONS:(c + 1) * W // REGIONS]
                images.append(random_crops(region, per, SIZE, rng))
                labels += [len(classes)] * per
                classes.append(f"{name}-r{r}c{c}")
    return torch.cat(images), torch.tensor(labels), classes


def run(ctx: Context) -> Findings:
    seeds = ctx.pick([0, 1, 2], [0])
    count, epochs = ctx.pick(6400, 1600), ctx.pick(15, 4)
    images, labels, classes = photo_regions(count)
    folder = write_folder(images, labels, classes, ctx.out_dir / "data" / "photo_regions")
    basis = oriented_gradient_basis()
    share, share_init, acc, comps0, comps_init0 = {}, {}, {}, None, None
    for seed in seeds:
        result = ctx.train(f"vit-seed{seed}", model=MODEL, data=str(folder), img_size=SIZE, epochs=epochs,
                           warmup_epochs=ctx.pick(3, 1), seed=seed, model_overrides=OVERRIDES, **FOLDER_AS_EMBEDDED)
        acc[seed] = result.best_score
        model, _ = best_model(result.run_dir)
        comps = patch_embed_filters(model, K)
        torch.manual_seed(seed)
        comps_init = patch_embed_filters(create_model(MODEL, in_chans=1, **OVERRIDES), K)
        share[seed], share_init[seed] = edge_share(comps, basis), edge_share(comps_init, basis)
        if comps0 is None:
            comps0, comps_init0 = comps, comps_init
    ctx.save(plot_filters(comps0, cols=8), "filters_trained.png",
             f"the top {K} principal components of the trained patch-embedding filters (seed {seeds[0]}), "
             f"largest first")
    ctx.save(plot_filters(comps_init0, cols=8), "filters_random_init.png",
             f"the same at random initialisation (seed {seeds[0]})")
    ctx.save(plot_filters(basis.float().reshape(-1, 1, PATCH, PATCH)[:16], cols=8), "oriented_gradient_basis.png",
             "the measure: an orthonormal basis of the oriented Gaussian-derivative filters (the first 16 of "
             f"{basis.shape[0]})")
    per_seed = {s: mean(share[s]) for s in seeds}
    per_seed_init = {s: mean(share_init[s]) for s in seeds}
    figures = {"edge_share": [per_seed[s] for s in seeds], "edge_share_random_init": [per_seed_init[s] for s in seeds],
               "edge_share_mean": mean(per_seed.values()), "edge_share_random_init_mean": mean(per_seed_init.values()),
               "per_component": {str(s): share[s] for s in seeds},
               "per_component_random_init": {str(s): share_init[s] for s in seeds},
               "white_noise_share": basis.shape[0] / PATCH ** 2, "basis_rank": basis.shape[0],
               "val_acc": [acc[s] for s in seeds], "chance": 1 / len(classes)}
    rows = [[f"seed {s}", acc[s], per_seed[s], per_seed_init[s], share[s][0], share[s][-1]] for s in seeds]
    rows.append(["mean", mean(acc.values()), figures["edge_share_mean"], figures["edge_share_random_init_mean"],
                 "", ""])
    header = ["", f"best val_acc ({len(classes)} regions)", f"edge share, top {K} components: trained",
              "random init", "component 1", f"component {K}"]
    headline = (f"energy of the top {K} filter components in oriented-gradient filters: "
                f"{fmt(figures['edge_share_mean'])} trained against {fmt(figures['edge_share_random_init_mean'])} "
                f"at random init (white noise: {fmt(figures['white_noise_share'])})")
    setup = [f"{len(images):,} crops of {SIZE}×{SIZE} from scikit-learn's two sample photos (grayscale), each photo "
             f"cut into {REGIONS}×{REGIONS} regions; class = region ({len(classes)} classes), 20% held out",
             f"{MODEL} with {PATCH}×{PATCH} patches at {SIZE}×{SIZE} (a 4×4 grid), {epochs} epochs, the trainer's "
             "defaults with ±1 px shifts",
             f"patch_embed_filters: the top {K} principal components of the 64 filters (each 8×8)",
             f"edge share: energy in the span of oriented Gaussian derivatives (1st and 2nd, 8 orientations, σ 1 and "
             f"2 px; rank {basis.shape[0]} of 64)"]
    return Findings(setup, seeds, figures, headline, (header, rows))


def decide(f: dict) -> tuple[str, str]:
    ratio = f["edge_share_mean"] / max(f["edge_share_random_init_mean"], 1e-12)
    every = all(t >= r + 0.1 for t, r in zip(f["edge_share"], f["edge_share_random_init"]))
    why = (f"edge share {f['edge_share_mean']:.3f} trained against {f['edge_share_random_init_mean']:.3f} at random "
           f"init ({ratio:.1f}×)")
    if ratio >= 2 and every:
        return "held", why
    if f["edge_share_mean"] > f["edge_share_random_init_mean"] + 0.05:
        return "partly", why
    return "did not hold", why


register(Study(
    name="filters",
    claim="A ViT's patch embedding learns edge- and texture-like filters: its principal components resemble "
          "oriented-gradient (Gabor-like) bases, unlike a random initialisation's.",
    rule="held if the top components' mean share of energy in oriented Gaussian-derivative filters is at least 2× "
         "the random initialisation's and at least 0.1 above it on every seed; partly if it is above it by more "
         "than 0.05 on the mean; did not hold otherwise.",
    run=run, decide=decide,
    needed="Two photos give little variety; the paper's filters come from 300M images. More natural images "
           "(ImageNet crops), colour, and a longer schedule would be the next step.",
    minutes="5",
))
