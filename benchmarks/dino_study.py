"""Does DINO learn features? For each seed, a ViT pretrained with DINO on the images alone, against the same
network at its random initialisation: k-NN accuracy (k = 20, cosine, votes weighted by exp(sim / 0.07)) and a
linear probe on the frozen [CLS] features of the teacher's backbone, on the held-out split.

    python benchmarks/dino_study.py [--data mnist] [--epochs 40] [--seeds 0 1 2] [--lr 5e-4] [--opt local_crops=2]

Also prints the teacher's output entropy and the centre's norm over training (from metrics.jsonl): an entropy
that falls from near log K and stays clear of 0 shows the run did not collapse to one prototype or to uniform.
Every run is an ordinary `vitkit.train` run under --runs-dir.
"""
from __future__ import annotations

import argparse
import ast
import math
import statistics

import torch
from torch.utils.data import DataLoader

import vitkit
from vitkit.data import EMBEDDED
from vitkit.train import TrainConfig, resolve, train
from vitkit.train.dino import Dino, linear_probe
from vitkit.train.dist import Processes

from finetune_study import cpu_name

MODELS = {"digits": "vit_pico_patch2_8", "mnist": "vit_pico_patch4_28"}


def at_random_init(cfg: TrainConfig) -> tuple[float, float]:
    """k-NN accuracy and linear-probe accuracy of the untrained network the run starts from."""
    cfg = resolve(cfg, embedded=cfg.data in EMBEDDED)
    objective = Dino(cfg, torch.device("cpu"), lambda *_: None)
    torch.manual_seed(cfg.seed)  # as the runtime does before building the model
    model = objective.build_model()
    loader = DataLoader(objective.val_set, batch_size=256)
    knn = objective.evaluate(model, loader, Processes())["val_knn_acc"]
    probe = linear_probe(model.teacher.backbone, objective.bank_set, objective.val_set, objective.num_classes,
                         torch.device("cpu"))
    return knn, probe["val_acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist", choices=sorted(MODELS))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a DINO model option, e.g. --opt local_crops=2 (repeatable; values as Python literals)")
    p.add_argument("--runs-dir", default="runs/dino-study")
    args = p.parse_args()
    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.opt)}
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        cfg = TrainConfig(objective="dino", model=MODELS[args.data], data=args.data, epochs=args.epochs, seed=seed,
                          weight_decay=0.04, weight_decay_end=0.4, lr=args.lr, model_overrides=options,
                          runs_dir=args.runs_dir, name=f"dino-seed{seed}", threads=args.threads, progress=False)
        knn0, probe0 = at_random_init(cfg)
        lines = []
        run = train(cfg, overwrite=True, log=lines.append)
        probe = next(float(line.split("val_acc ")[1].split()[0]) for line in lines if "linear probe" in line)
        m = run.metrics
        out_dim = vitkit.model_config(f"dino_{MODELS[args.data]}").out_dim
        trace = [m[i] for i in sorted({0, len(m) // 4, len(m) // 2, 3 * len(m) // 4, len(m) - 1})]
        print(f"seed {seed}: k-NN {knn0:.4f} at random init → {run.best_score:.4f} (best epoch; last "
              f"{m[-1]['val_knn_acc']:.4f}); linear probe {probe0:.4f} → {probe:.4f}")
        print("  teacher entropy (log K = {:.2f}) / centre norm at epochs ".format(math.log(out_dim))
              + ", ".join(f"{r['epoch']}: {r['teacher_entropy']:.2f} / {r['center_norm']:.2f}" for r in trace))
        rows.append((knn0, run.best_score, m[-1]["val_knn_acc"], probe0, probe))
    print(f"\n{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; {MODELS[args.data]} on "
          f"{args.data}, {args.epochs} epochs, seeds {args.seeds}")
    names = ("k-NN at random init", "k-NN after DINO (best)", "k-NN after DINO (last)", "linear probe at random init",
             "linear probe after DINO")
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        print(f"  {name:<30} mean {statistics.mean(values):.4f} (sd {statistics.pstdev(values):.4f})")


if __name__ == "__main__":
    main()
