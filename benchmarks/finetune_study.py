"""Does fine-tuning help? A ViT pretrained on MNIST digits 0–4, fine-tuned with `--init` on digits 5–9 with only
500 labels, against the same model trained from scratch on the same 500 images for the same epochs.

    python benchmarks/finetune_study.py [--epochs 30] [--seeds 0 1 2] [--threads 1]

Prints each run's validation accuracy (best epoch and last epoch) and the mean over the seeds. The 5–9
validation split has ~500 images. Every run is an ordinary `vitkit.train` run under --runs-dir.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from vitkit.bench import cpu_name  # noqa: F401  (the other study scripts import it from here)
from vitkit.train import TrainConfig, train

MODEL = "vit_pico_patch4_28"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning / from-scratch epochs (default 30)")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--labels", type=int, default=500, help="training images of digits 5–9 (default 500)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="runs/finetune-study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quiet = lambda *_: None  # noqa: E731
    common = dict(model=MODEL, data="mnist", runs_dir=args.runs_dir, threads=args.threads, progress=False)
    pre = train(TrainConfig(**common, name="pretrain-0-4", classes="0,1,2,3,4", epochs=args.pretrain_epochs),
                overwrite=True, log=quiet)
    print(f"pretrained on digits 0–4: best val_acc {pre.best_score:.4f} ({args.pretrain_epochs} epochs)")
    init = str(pre.run_dir / "best.safetensors")
    results = {"fine-tuned (--init, layer decay 0.75)": [], "from scratch": []}
    for seed in args.seeds:
        task = dict(common, classes="5,6,7,8,9", train_size=args.labels, epochs=args.epochs, seed=seed)
        for label, extra in (("fine-tuned (--init, layer decay 0.75)", dict(init=init, layer_decay=0.75)),
                             ("from scratch", {})):
            name = f"{'finetune' if extra else 'scratch'}-seed{seed}"
            run = train(TrainConfig(**task, **extra, name=name), overwrite=True, log=quiet)
            last = run.metrics[-1]["val_acc"]
            results[label].append((run.best_score, last))
            print(f"  seed {seed}  {label:<38} best {run.best_score:.4f}  last {last:.4f}")
    print(f"\n{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; {MODEL}, digits 5–9 with "
          f"{args.labels} labels, {args.epochs} epochs, seeds {args.seeds}")
    for label, runs in results.items():
        best = [b for b, _ in runs]
        last = [x for _, x in runs]
        print(f"  {label:<38} mean best {statistics.mean(best):.4f} (sd {statistics.pstdev(best):.4f})  "
              f"mean last {statistics.mean(last):.4f}")


if __name__ == "__main__":
    main()
