"""attention-memory: explicit attention materialises H·N² weights; the fused kernel does not.

One attention call (batch 1, ViT-S/16's 6 heads of 64, fp32, forward, no grad) through vitkit.layers.attend, at
N = M² + 1 tokens for M×M patch grids from 14×14 (ViT at 224/16: 197 tokens) up. Peak memory is what the call
adds above the inputs (vitkit.bench.PeakMemory: on the CPU, the peak resident set above the start); time is
the median of a few calls after the first. The lectures' arithmetic: one head's matrix holds N² entries
(14⁴ = 38,416 for the 196 patches), 4 bytes each, so a layer's weights take H·N²·4 bytes.
"""
from __future__ import annotations

import ctypes
import math
import statistics
import time

import torch
from matplotlib.ticker import NullFormatter

from ..analysis.cost import human_bytes
from ..bench import PeakMemory
from ..layers.attention import attend
from .common import Context, Findings, Study, figure, register

HEADS, HEAD_DIM = 6, 64


def unmap_freed_memory() -> None:
    """Make glibc give large freed blocks back to the system at once (a fixed 64 KiB mmap threshold), so that
    the resident set measures each call alone. By default the threshold grows after a large free, later blocks
    come from pages a previous call left resident, and a fused call can show 0 bytes. Not glibc: nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixing it also turns off its dynamic growth)
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def measure(n: int, explicit: bool, iters: int) -> tuple[int, float]:
    """(bytes one call adds at its peak, median seconds per call) for n tokens."""
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM) for _ in range(3))

    def call():
        with torch.no_grad():
            attend(q, k, v, need_weights=explicit)

    with PeakMemory("cpu") as mem:  # the first call: later ones reuse pages it left resident
        call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return mem.bytes, statistics.median(times)


def exponent(ns: list[int], mems: list[float]) -> float:
    """The growth exponent b of memory ≈ a·N^b between the second size and the largest (the smallest call is
    below the resolution of a page-granular measure); memory is floored at one page (4 KiB)."""
    lo, hi = 1, len(ns) - 1
    return math.log(max(mems[hi], 4096) / max(mems[lo], 4096)) / math.log(ns[hi] / ns[lo])


def run(ctx: Context) -> Findings:
    grids = ctx.pick([14, 24, 32, 48, 64, 80], [14, 24, 32])
    iters = ctx.pick(3, 2)
    ns = [m * m + 1 for m in grids]
    unmap_freed_memory()
    for explicit in (False, True):  # one-off allocations (kernel set-up) before anything is measured
        measure(ns[0], explicit, iters=1)
    rows, fig_rows = [], {"explicit_bytes": [], "fused_bytes": [], "explicit_s": [], "fused_s": [],
                          "arithmetic_bytes": []}
    for m, n in zip(grids, ns):
        fb, fs = measure(n, explicit=False, iters=iters)
        eb, es = measure(n, explicit=True, iters=iters)
        arith = HEADS * n * n * 4
        ctx.log(f"  N={n}: fused {human_bytes(fb)} {fs * 1e3:.1f} ms, explicit {human_bytes(eb)} {es * 1e3:.1f} ms")
        for key, v in zip(fig_rows, (eb, fb, es, fs, arith)):
            fig_rows[key].append(v)
        rows.append([f"{m}×{m} + [CLS]", n, m ** 4, arith, eb, fb, eb / arith, es * 1e3, fs * 1e3, es / fs])
    figures = {
        "tokens": ns, "grid": grids, "heads": HEADS, "head_dim": HEAD_DIM, **fig_rows,
        "explicit_exponent": exponent(ns, fig_rows["explicit_bytes"]),
        "fused_exponent": exponent(ns, fig_rows["fused_bytes"]),
        "explicit_over_arithmetic_at_largest": fig_rows["explicit_bytes"][-1] / fig_rows["arithmetic_bytes"][-1],
        "time_ratio_at_largest": fig_rows["explicit_s"][-1] / fig_rows["fused_s"][-1],
        "lecture_entries_196_patches": 14 ** 4, "lecture_bytes_per_matrix": 14 ** 4 * 4,
    }
    _plots(ctx, ns, fig_rows)
    big = ns[-1]
    headline = (f"at {big:,} tokens explicit attention took {human_bytes(fig_rows['explicit_bytes'][-1])} "
                f"({figures['explicit_over_arithmetic_at_largest']:.1f}× the H·N²·4 B arithmetic), fused "
                f"{human_bytes(fig_rows['fused_bytes'][-1])}; memory grew as N^{figures['explicit_exponent']:.2f} "
                f"against N^{figures['fused_exponent']:.2f}")
    setup = [f"one attention call through vitkit.layers.attend: batch 1, {HEADS} heads × {HEAD_DIM} (ViT-S/16), "
             f"fp32, forward without grad, on the CPU",
             "explicit: need_weights=True (scores, softmax, weights @ v; the weights are kept); fused: "
             "F.scaled_dot_product_attention",
             f"tokens N = M² + 1 for M in {grids}; peak memory of the first call above its inputs "
             f"(vitkit.bench.PeakMemory, page-granular; glibc told to unmap freed blocks); time: median of {iters} "
             f"calls after it",
             "no training and no seed: the measure is deterministic up to the machine's noise"]
    header = ["grid", "tokens N", "M⁴ (patch entries per head)", "H·N²·4 B", "explicit peak B", "fused peak B",
              "explicit / arithmetic", "explicit ms", "fused ms", "time explicit / fused"]
    notes = [f"The lectures' figure: 14⁴ = {14 ** 4:,} entries per head for the 196 patches "
             f"(197² = {197 ** 2:,} with [CLS]), {human_bytes(14 ** 4 * 4)} in fp32.",
             "The explicit path holds the scores and the weights at once (and a masked copy while the softmax "
             "runs), so its peak is a small multiple of one set of H·N² entries."]
    return Findings(setup, [], figures, headline, (header, rows), notes)


def _plots(ctx: Context, ns, f) -> None:
    fig = figure(9, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.loglog(ns, f["explicit_bytes"], "o-", label="explicit (measured)")
    ax1.loglog(ns, [max(b, 1) for b in f["fused_bytes"]], "s-", label="fused (measured)")
    ax1.loglog(ns, f["arithmetic_bytes"], "k--", label="H·N²·4 B (lecture arithmetic)")
    ax1.set(xlabel="tokens N", ylabel="peak bytes added", title="memory")
    ax1.legend(fontsize=8)
    ax2.loglog(ns, [t * 1e3 for t in f["explicit_s"]], "o-", label="explicit")
    ax2.loglog(ns, [t * 1e3 for t in f["fused_s"]], "s-", label="fused")
    ax2.set(xlabel="tokens N", ylabel="ms per call", title="time")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(ns, [f"{n:,}" for n in ns], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    ctx.save(fig, "attention_memory.png", "peak memory and time of one attention call against tokens (log-log)")


def decide(f: dict) -> tuple[str, str]:
    quadratic = f["explicit_exponent"] >= 1.7 and f["explicit_over_arithmetic_at_largest"] >= 0.9
    fused_linear = f["fused_exponent"] <= 1.3
    why = (f"explicit memory grew as N^{f['explicit_exponent']:.2f} and reached "
           f"{f['explicit_over_arithmetic_at_largest']:.2f}× H·N²·4 B; fused grew as N^{f['fused_exponent']:.2f}")
    if quadratic and fused_linear:
        return "held", why
    if quadratic or fused_linear:
        return "partly", why
    return "did not hold", why


register(Study(
    name="attention-memory",
    claim="Explicit attention materialises an N×N matrix per head (14⁴ = 38,416 entries at 196 patches), so its "
          "memory grows as N², while a fused kernel's grows linearly.",
    rule="held if explicit memory grows with exponent ≥ 1.7 (second size to largest) and reaches ≥ 0.9× the "
         "H·N²·4 B arithmetic, and fused memory grows with exponent ≤ 1.3; partly if one of the two; did not hold "
         "otherwise.",
    run=run, decide=decide,
    needed="Where the explicit memory is below the arithmetic, the allocator reused memory or the sizes are too "
           "small to leave the page noise: measure larger N (or on CUDA, where max_memory_allocated is exact).",
    minutes="1",
))
