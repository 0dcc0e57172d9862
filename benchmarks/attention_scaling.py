"""Attention time and memory against sequence length: fused (F.scaled_dot_product_attention) against explicit
(scores → softmax → weights @ v, which keeps the N×N weights), both through vitkit.layers.attend.

    python benchmarks/attention_scaling.py [--tokens 197,576,1024,2304,4096] [--heads 6] [--head-dim 64]
        [--batch 1] [--iters 3] [--device cpu|cuda]

Time: median of --iters forward calls (no grad) after one warm-up.
Memory: on CUDA, torch.cuda.max_memory_allocated over one call, minus the inputs. On the CPU it is an
estimate from tensor sizes, not a measurement: explicit = the scores and the softmax weights, 2·B·H·N² floats,
plus the output; fused = the output B·H·N·D plus SDPA's blocked working set, taken as 0 (a lower bound).
"""
import argparse
import statistics
import time

import torch

from vitkit.analysis.cost import human_bytes
from vitkit.layers.attention import attend


def run(n: int, args, dev: torch.device, need_weights: bool) -> tuple[float, int, str]:
    q, k, v = (torch.randn(args.batch, args.heads, n, args.head_dim, device=dev) for _ in range(3))
    elt = q.element_size()
    out_bytes = q.numel() * elt

    def call():
        with torch.no_grad():
            attend(q, k, v, need_weights=need_weights)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    call()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        call()
        mem, kind = torch.cuda.max_memory_allocated(dev) - base, "measured"
    else:
        matrices = 2 * args.batch * args.heads * n * n * elt if need_weights else 0
        mem, kind = matrices + out_bytes, "estimated"
    return statistics.median(times), mem, kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="197,576,1024,2304,4096")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.heads} heads × {args.head_dim}, fp32, forward only\n")
    print("| tokens | fused ms | explicit ms | explicit/fused | fused mem | explicit mem | memory |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n in (int(t) for t in args.tokens.split(",")):
        tf, mf, kind = run(n, args, dev, need_weights=False)
        te, me, _ = run(n, args, dev, need_weights=True)
        print(f"| {n} | {tf * 1e3:.2f} | {te * 1e3:.2f} | {te / tf:.2f} | {human_bytes(mf)} | {human_bytes(me)} "
              f"| {kind} |", flush=True)


if __name__ == "__main__":
    main()
