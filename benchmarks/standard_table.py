"""The standard table: vitkit against timm (same weights, alternating rounds), inference and training step.

    PYTHONPATH=tests/timm_shim python benchmarks/standard_table.py [--batch 32] [--models vit_tiny_patch16_224,...]
        [--iters 5] [--warmup 1] [--device cpu|cuda]

On the CPU: fp32 eager. On a CUDA GPU: bf16 eager and bf16 torch.compile (that path is written but has not
been run: no GPU was available when it was written). Prints a Markdown table: vitkit images/s, timm images/s,
ratio vitkit/timm (median of the per-round ratios) with their interquartile range.
(tests/timm_shim stands in for torchvision, which timm imports and which has no CPU build here.)
"""
import argparse

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
    args = ap.parse_args()
    dev = resolve_device(args.device)
    names = args.models.split(",") if args.models else list(STANDARD.values())
    labels = {v: k for k, v in STANDARD.items()}
    settings = [("fp32", False)] if dev.type == "cpu" else [("bf16", False), ("bf16", True)]
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, batch {args.batch}, "
          f"warm-up {args.warmup}, {args.iters} alternating rounds\n")
    print("| model | dtype | compiled | mode | vitkit img/s | timm img/s | vitkit/timm (median of rounds) "
          "| IQR of round ratios |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for name in names:
        for dtype, compiled in settings:
            r = compare(name, mode=args.mode, batch=args.batch, device=str(dev), dtype=dtype, compile=compiled,
                        warmup=args.warmup, iters=args.iters)
            for mode in ("infer", "train"):
                if mode in r:
                    c = r[mode]
                    print(f"| {labels.get(name, name)} (`{name}`) | {dtype} | {'yes' if compiled else 'no'} | {mode} "
                          f"| {c['vitkit']['images_per_s']:.1f} | {c['timm']['images_per_s']:.1f} | {c['ratio']:.3f} "
                          f"| {c['ratio_iqr'][0]:.3f}–{c['ratio_iqr'][1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
