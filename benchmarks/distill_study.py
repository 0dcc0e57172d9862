"""Does distillation help, as DeiT claims? On MNIST with a label budget, a ResNet teacher trained on those labels,
then a small distilled DeiT student with and without the teacher (same data, epochs and seeds).

    python benchmarks/distill_study.py [--labels 1000] [--epochs 40] [--seeds 0 1 2] [--threads 1]

Prints the teacher's, each student's and each distilled student's validation accuracy, and the means.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from finetune_study import cpu_name
from vitkit.train import TrainConfig, train

STUDENT = "deit_tiny_distilled_patch16_224"
STUDENT_OPTS = dict(patch_size=4, embed_dim=64, depth=4, num_heads=4)
TEACHER = "resnet18"
TEACHER_OPTS = dict(channels=(32, 64, 128, 256), stem_width=32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, default=1000, help="training images with labels (default 1000)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--distill", choices=["soft", "hard"], default="hard")
    p.add_argument("--alpha", type=float, default=0.5, help="distillation weight (default 0.5)")
    p.add_argument("--tau", type=float, default=1.0, help="soft-distillation temperature (default 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="runs/distill-study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quiet = lambda *_: None  # noqa: E731
    common = dict(data="mnist", train_size=args.labels, runs_dir=args.runs_dir, threads=args.threads, progress=False)
    teacher = train(TrainConfig(**common, name="teacher", model=TEACHER, model_overrides=TEACHER_OPTS,
                                epochs=args.teacher_epochs, lr=2e-3), overwrite=True, log=quiet)
    print(f"teacher {TEACHER} {TEACHER_OPTS}: best val_acc {teacher.best_score:.4f}")
    ckpt = str(teacher.run_dir / "best.safetensors")
    results = {"student alone": [], f"student distilled ({args.distill})": []}
    for seed in args.seeds:
        for label, extra in results.items():
            distil = (dict(teacher=ckpt, distill=args.distill, distill_alpha=args.alpha, distill_tau=args.tau)
                      if "distilled" in label else {})
            name = f"{'distilled' if distil else 'alone'}-seed{seed}"
            run = train(TrainConfig(**common, name=name, model=STUDENT, model_overrides=STUDENT_OPTS, img_size=28,
                                    epochs=args.epochs, seed=seed, **distil), overwrite=True, log=quiet)
            extra.append((run.best_score, run.metrics[-1]["val_acc"]))
            print(f"  seed {seed}  {label:<28} best {run.best_score:.4f}  last {run.metrics[-1]['val_acc']:.4f}")
    print(f"\n{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; MNIST with {args.labels} labels; "
          f"student {STUDENT} {STUDENT_OPTS}; {args.epochs} epochs; seeds {args.seeds}; alpha {args.alpha}, "
          f"tau {args.tau}")
    print(f"  teacher                      best {teacher.best_score:.4f}")
    for label, runs in results.items():
        print(f"  {label:<28} mean best {statistics.mean(b for b, _ in runs):.4f} "
              f"(sd {statistics.pstdev([b for b, _ in runs]):.4f})  mean last {statistics.mean(x for _, x in runs):.4f}")


if __name__ == "__main__":
    main()
