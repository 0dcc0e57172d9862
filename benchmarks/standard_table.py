"""The standard table: vitkit against timm (same weights, alternating rounds), inference and training step.

    PYTHONPATH=tests/timm_shim python benchmarks/standard_table.py [--batch 32] [--models vit_tiny_patch16_224,...]
        [--iters 5] [--warmup 1] [--device cpu|cuda]

On the CPU: fp32 eager. On a CUDA GPU: bf16 eager and bf16 torch.compile (that path is written but has not
been run: no GPU was available when it was written). Prints a Markdown table: vitkit images/s, timm images/s,
ratio vitkit/timm (median of the per-round ratios) with their interquartile range; CPU inference also has a row
for each other vitkit path (micro-batched, bf16 autocast; see vitkit.bench.compare), timed in the same rounds against
the same timm figures, with how far its logits are from timm's.

Each model runs in a fresh Python process: how fast a large CPU batch runs depends on what the process allocated
before (glibc hands big blocks back to the kernel and takes fresh pages for them, or not, by its history), so a
model measured after another one in the same process reads differently.
(tests/timm_shim stands in for torchvision, which timm imports and which has no CPU build here.)
"""
import argparse
import subprocess
import sys

import torch

from vitkit.bench import compare, resolve_device

STANDARD = {"ViT-Ti/16": "vit_tiny_patch16_224", "ViT-S/16": "vit_small_patch16_224",
            "ViT-B/16": "vit_base_patch16_224", "DeiT-S": "deit_small_patch16_224",
            "Swin-T": "swin_tiny_patch4_window7_224", "ResNet-50": "resnet50", "ConvNeXt-T": "convnext_tiny"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", help="comma-separated registered names (default: the standard seven)")
    ap.add_argument("--mode", choices=["infer", "train", "both"], default="both")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # one model, in a child process
    args = ap.parse_args()
    dev = resolve_device(args.device)
    names = args.models.split(",") if args.models else list(STANDARD.values())
    labels = {v: k for k, v in STANDARD.items()}
    settings = [("fp32", False)] if dev.type == "cpu" else [("bf16", False), ("bf16", True)]
    if args.rows_only:
        rows(names[0], labels.get(names[0], names[0]), settings, dev, args)
        return
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, batch {args.batch}, "
          f"warm-up {args.warmup}, {args.iters} alternating rounds\n")
    print("| model | dtype | mode | vitkit path | vitkit img/s | timm img/s | vitkit/timm (median of rounds) "
          "| IQR of round ratios | logits vs timm: max \\|Δ\\|, top-1 agreement |")
    print("|---|---|---|---|---:|---:|---:|---|---|", flush=True)
    for name in names:  # each in a fresh process (see above)
        child = [sys.executable, __file__, "--batch", str(args.batch), "--mode", args.mode, "--warmup",
                 str(args.warmup), "--iters", str(args.iters), "--models", name, "--rows-only"]
        subprocess.run(child + (["--device", args.device] if args.device else []), check=True)


def rows(name: str, label: str, settings, dev: torch.device, args) -> None:
    """Print the table rows of one model: each mode, and in inference each vitkit path."""
    for dtype, compiled in settings:
        r = compare(name, mode=args.mode, batch=args.batch, device=str(dev), dtype=dtype, compile=compiled,
                    warmup=args.warmup, iters=args.iters)
        for mode in ("infer", "train"):
            if mode not in r:
                continue
            c = r[mode]
            paths = c.get("paths", {"compiled" if compiled else "eager": c})
            for path, p in paths.items():  # each against timm's plain call (compiled too, when compiled)
                logits = (f"{p['max_abs_logit_diff']:.1e}, {100 * p['top1_agreement']:.1f}%"
                          if "top1_agreement" in p else "")
                print(f"| {label} (`{name}`) | {p.get('dtype', dtype)} | {mode} | {path} "
                      f"| {p['vitkit']['images_per_s']:.1f} | {c['timm']['images_per_s']:.1f} "
                      f"| {p['ratio']:.3f} | {p['ratio_iqr'][0]:.3f}–{p['ratio_iqr'][1]:.3f} | {logits} |",
                      flush=True)

if __name__ == "__main__":
    main()
