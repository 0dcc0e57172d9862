"""`vitkit bench`: inference and training-step throughput and peak memory, alone or against timm."""
from __future__ import annotations

import argparse
import json
import sys

from ..analysis.cost import human_bytes
from ..bench import COMPILE_MODES, DTYPES, MODES, run_bench


def add_parser(sub, name):
    p = sub.add_parser(name, help="images/s and peak memory for inference and a training step",
                       description="Time inference (eval, no grad) and a training step (forward + backward + "
                                   "AdamW) on random images: median images/s over --iters batches after --warmup "
                                   "untimed ones, and peak memory (CUDA: max_memory_allocated; CPU: growth of the "
                                   "process's peak RSS, a lower bound). --compare timm times timm's model of the "
                                   "same name with the same weights, alternating rounds, and prints the ratio "
                                   "vitkit/timm with its interquartile range. On CUDA it also prints model FLOP "
                                   "utilisation against a measured bf16 matmul peak (ViT family). On the CPU, "
                                   "inference is also timed with the batch fed in micro-batches (vitkit.infer), "
                                   "and the faster path is named.")
    p.add_argument("model", help="a registered model name, e.g. vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="fp32, or autocast to bf16/fp16 with fp32 weights (default: fp32)")
    p.add_argument("--compile", nargs="?", const="default", default=False, choices=list(COMPILE_MODES),
                   metavar="MODE", help="torch.compile the model(s) first; MODE: " + ", ".join(COMPILE_MODES)
                                        + " (reduce-overhead: CUDA graphs on a GPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda where present, else cpu")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: export to ONNX and time session.run (CPU, fp32, inference only)")
    p.add_argument("--mode", choices=list(MODES), default="both", help="what to time (default: both)")
    p.add_argument("--compare", choices=["timm"], help="also time timm's model with the same weights")
    p.add_argument("--micro-batch", type=_micro_batch, default="auto", metavar="N|auto",
                   help="also time inference with the batch fed N images at a time; auto (default): as many as "
                        "keep the largest activation within 16 MiB, on the CPU only; 0: don't")
    p.add_argument("--no-bf16-path", dest="bf16_path", action="store_false",
                   help="with --compare on the CPU in fp32, don't also time vitkit under bf16 autocast")
    p.add_argument("--no-int8-path", dest="int8_path", action="store_false",
                   help="with --compare on the CPU in fp32, don't also time vitkit's int8 path (dynamic quantisation "
                        "of the Linear layers: vitkit predict --int8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed batches, or A/B rounds with --compare (default: 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _micro_batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of images (0: none) or 'auto', got {text!r}")
    return n


def _line(label: str, r: dict) -> str:
    lo, hi = r["images_per_s_iqr"]
    text = (f"  {label:<7}{r['images_per_s']:>10.1f} images/s  (IQR {lo:.1f}–{hi:.1f}; "
            f"{r['ms_per_batch']:.1f} ms/batch)")
    if "peak_mem_bytes" in r:
        text += f"  peak mem {human_bytes(r['peak_mem_bytes'])}"
    if r.get("mfu") is not None:
        text += f"  MFU {100 * r['mfu']:.1f}%"
    return text


def run(args) -> int:
    if args.dtype == "bf16" and args.device != "cuda":
        import torch

        from ..infer import cpu_runs_bf16_fast
        if not torch.cuda.is_available() and cpu_runs_bf16_fast() is False:
            print("vitkit bench: warning: this CPU has neither AMX nor AVX-512 BF16, where bf16 autocast runs several "
                  "times slower than fp32; timing it anyway, as asked (drop --dtype bf16 for the fast path)",
                  file=sys.stderr)
    record = run_bench(args.model, batch=args.batch, img_size=args.img_size, dtype=args.dtype, compile=args.compile,
                       device=args.device, runtime=args.runtime, mode=args.mode, compare_with=args.compare,
                       warmup=args.warmup, iters=args.iters, micro_batch=args.micro_batch, bf16_path=args.bf16_path,
                       int8_path=args.int8_path)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    compiled = {False: "", True: ", compiled", "default": ", compiled"}.get(record["compile"],
                                                                         f", compiled ({record['compile']})")
    print(f"{record['model']}  batch {record['batch']}, {record['dtype']}, {record['device']} "
          f"({record['device_name']}, {record['threads']} threads), {record['runtime']}{compiled}, "
          f"torch {record['torch']}")
    cmp = record.get("compare")
    for mode in ("infer", "train"):
        if mode not in record:
            continue
        if cmp is None:
            print(_line(mode, record[mode]))
            if mode == "infer" and "infer_micro" in record:
                print(_line("micro", record["infer_micro"]) + f"  ({record['infer_micro']['micro_batch']} images "
                                                              f"at a time)")
            continue
        c = cmp[mode]
        print(f"{mode}")
        print(_line("timm", c["timm"]))
        for path, p in c.get("paths", {"compiled" if record["compile"] else "eager": c}).items():
            lo, hi = p["ratio_iqr"]
            print(_line("vitkit", p["vitkit"]) + f"  [{path}]")
            print(f"  ratio vitkit/timm {p['ratio']:.3f}  (median of {len(p['ratios'])} per-round ratios, IQR "
                  f"{lo:.3f}–{hi:.3f}; ratio of the medians {p['ratio_of_medians']:.3f})"
                  + (f"; logits vs timm: max |Δ| {p['max_abs_logit_diff']:.1e}, top-1 agreement "
                     f"{100 * p['top1_agreement']:.1f}%" if "top1_agreement" in p else ""))
        if "best_path" in c:
            print(f"  best path: {c['best_path']}, {c['best_ratio']:.3f}× timm's; best fp32 path: "
                  f"{c['best_fp32_path']}, {c['best_fp32_ratio']:.3f}×")
    if cmp is not None:
        print(f"same weights: max |Δlogit| {cmp['max_abs_logit_diff']:.1e} "
              f"(checked ≤ {cmp['logits_checked_atol']:.0e})")
    if "peak_mem_bytes" in record.get("infer", record.get("train", {})):
        kind = record.get("infer", record.get("train"))["peak_mem_kind"]
        print(f"peak memory: {kind}")
    if record["device"].startswith("cpu"):
        print("MFU: not reported on the CPU")
    return 0
