"""int8 inference against timm's fp32 eager, in the same alternated rounds: PyTorch's dynamic quantisation
(`vitkit predict --int8`) and onnxruntime's (`vitkit export --onnx --int8`), beside vitkit's fp32 eager and
onnxruntime fp32.

    PYTHONPATH=tests/timm_shim python benchmarks/int8_speed.py [--model vit_small_patch16_224] [--batch 32 1]
        [--threads 2] [--rounds 7]

Every model holds the same (random) weights, checked against timm first (max |Δlogit| ≤ 1e-4 in fp32). Prints,
per batch size and path: images/s (median of the rounds), the median per-round ratio to timm, and the path's max
|Δlogit| and top-1 agreement with timm's fp32 logits on that batch (random weights and inputs: the accuracy of
int8 on a trained model is `vitkit eval CKPT --int8`'s to measure).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vitkit.bench import cpu_name, build_pair
from vitkit.export import OnnxClassifier, export_onnx
from vitkit.quantize import quantize_int8, quantize_onnx_int8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours, timm_model, diff = build_pair(args.model)
    size = ours.cfg.img_size
    print(f"{args.model}, {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; fp32 parity with "
          f"timm {diff:.1e}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = export_onnx(ours, f"{tmp}/fp32.onnx", img_size=size, in_chans=3)
        int8_file = quantize_onnx_int8(fp32_file, f"{tmp}/int8.onnx")
        ort_fp32, ort_int8 = OnnxClassifier(fp32_file), OnnxClassifier(int8_file)
        torch_int8 = quantize_int8(ours)
        for batch in args.batch:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            paths = {"timm fp32 eager": timm_model, "vitkit fp32 eager": ours, "vitkit int8 (PyTorch)": torch_int8,
                     "onnxruntime fp32": ort_fp32, "onnxruntime int8": ort_int8}
            times = {k: [] for k in paths}
            with torch.inference_mode():
                reference = timm_model(x)
                outs = {k: f(x) for k, f in paths.items()}  # also a warm-up
                for f in paths.values():
                    f(x)
                for r in range(args.rounds):
                    order = list(paths.items())
                    for k, f in (order if r % 2 == 0 else order[::-1]):
                        t0 = time.perf_counter()
                        f(x)
                        times[k].append(time.perf_counter() - t0)
            print(f"batch {batch}:")
            for k in paths:
                ratio = statistics.median(t / o for t, o in zip(times["timm fp32 eager"], times[k]))
                agree = float((outs[k].argmax(-1) == reference.argmax(-1)).float().mean())
                print(f"  {k:<22} {batch / statistics.median(times[k]):8.1f} images/s  {ratio:5.2f}× timm   "
                      f"max |Δlogit| {float((outs[k] - reference).abs().max()):.1e}, top-1 agreement {agree:.3f}")


if __name__ == "__main__":
    main()
