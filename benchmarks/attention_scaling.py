"""Attention time and memory against sequence length: fused (F.scaled_dot_product_attention) against explicit
(scores → softmax → weights @ v, which keeps the N×N weights), both through vitkit.layers.attend.

    python benchmarks/attention_scaling.py [--tokens 197,576,1024,2304,4096] [--heads 6] [--head-dim 64]
        [--batch 1] [--iters 3] [--device cpu|cuda]

Time: median of --iters forward calls (no grad) after the first one, which is the one whose memory is taken.
Memory: what one call adds at its peak, the inputs already made (vitkit.bench.PeakMemory): on CUDA,
torch.cuda.max_memory_allocated minus what was allocated before; on a Linux CPU, the peak resident set size
(VmHWM, reset first) minus the resident size before: output, scores and scratch, to within a page.
"""
import argparse
import statistics
import time

import torch

from vitkit.analysis.cost import human_bytes
from vitkit.bench import PeakMemory
from vitkit.layers.attention import attend


def run(n: int, args, dev: torch.device, need_weights: bool) -> tuple[float, int, str]:
    q, k, v = (torch.randn(args.batch, args.heads, n, args.head_dim, device=dev) for _ in range(3))

    def call():
        with torch.no_grad():
            attend(q, k, v, need_weights=need_weights)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    with PeakMemory(dev) as mem:  # the first call: on the CPU, later ones reuse pages the first left resident
        call()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.bytes - base, mem.kind


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
    print("| tokens | fused ms | explicit ms | explicit/fused | fused peak mem | explicit peak mem | output tensor |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    fused_mem = {}
    for n in (int(t) for t in args.tokens.split(",")):
        tf, mf, kind = run(n, args, dev, need_weights=False)
        te, me, _ = run(n, args, dev, need_weights=True)
        fused_mem[n] = mf
        out = args.batch * args.heads * n * args.head_dim * 4
        print(f"| {n} | {tf * 1e3:.2f} | {te * 1e3:.2f} | {te / tf:.2f} | {human_bytes(mf)} | {human_bytes(me)} "
              f"| {human_bytes(out)} |", flush=True)
    print(f"\nmemory: {kind}")
    if 1024 in fused_mem and 4096 in fused_mem and fused_mem[1024]:
        print(f"\nfused peak memory, 4096 tokens / 1024 tokens: {fused_mem[4096] / fused_mem[1024]:.2f}× "
              f"(linear growth: 4×; quadratic: 16×)")


if __name__ == "__main__":
    main()
