"""Greedy decoding with the decoder's key/value cache against without it: tokens/s of a Transformer.

    python benchmarks/kv_cache.py [--model transformer_small|transformer_base] [--batch 1 16] [--tokens 64]
        [--src-len 32] [--rounds 5] [--threads 1] [--quick]

The model is untrained (src_vocab = tgt_vocab = --vocab, default 11; max_len 128), in eval mode, under
torch.no_grad(). Each path decodes a batch of random source ids (3 … vocab-1: no padding, no specials) for
exactly --tokens steps, feeding back the argmax whatever it is: the loop below calls model.decode step by step
rather than vitkit.generate.greedy, which would stop at the EOS an untrained model may emit at once.

    cache     each step feeds only the newest token; its self-attention keys and values are appended to the
              cache, and the cross-attention's keys and values of the memory are computed once
    no cache  each step feeds the whole prefix again, BOS onwards (what decoding costs without the seam)

A round times one decode of the batch, encoding included. Each path's time is the median of --rounds rounds,
the two alternated (cache, no cache, cache, …) so a change in the machine's load hits both; one call of each
comes first, untimed. tokens/s = batch · tokens / time. The script also says whether the two paths emitted the
same tokens (they should, up to float rounding). --quick: 1 round of 8 tokens, to check that the script runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitkit import create_model

from finetune_study import cpu_name


def decode_steps(model, src: torch.Tensor, steps: int, cache: bool) -> torch.Tensor:
    """Exactly `steps` greedy tokens after BOS for src (B, S), with or without the cache → (B, steps)."""
    memory = model.encode(src)
    ys = torch.full((src.shape[0], 1), model.cfg.bos_id, dtype=torch.long)  # (B, 1)
    kv = model.new_cache() if cache else None
    for _ in range(steps):
        hidden = model.decode(ys[:, -1:] if kv is not None else ys, memory, kv)  # (B, 1 or t, d)
        ys = torch.cat([ys, model.generator(hidden[:, -1]).argmax(-1, keepdim=True)], dim=1)
    return ys[:, 1:]


def timed(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(model, batch: int, args) -> dict:
    """Median seconds of each path over alternated rounds, and whether their tokens agree."""
    g = torch.Generator().manual_seed(batch)
    src = torch.randint(3, args.vocab, (batch, args.src_len), generator=g)  # (B, S)
    paths = {"cache": lambda: decode_steps(model, src, args.tokens, True),
             "no cache": lambda: decode_steps(model, src, args.tokens, False)}
    outs = {name: fn() for name, fn in paths.items()}  # untimed first calls
    times = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            times[name].append(timed(fn)[0])
    same = float((outs["cache"] == outs["no cache"]).float().mean())
    return {name: statistics.median(t) for name, t in times.items()} | {"same": same}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="transformer_small", choices=["transformer_small", "transformer_base"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    p.add_argument("--tokens", type=int, default=64, help="decoding steps (default: 64)")
    p.add_argument("--src-len", type=int, default=32, help="source length (default: 32)")
    p.add_argument("--vocab", type=int, default=11, help="source and target vocabulary (default: 11)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per path (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--quick", action="store_true", help="1 round of 8 tokens: check that the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.tokens = 1, 8
    torch.set_num_threads(args.threads)
    model = create_model(args.model, src_vocab=args.vocab, tgt_vocab=args.vocab, max_len=128).eval()
    params = sum(t.numel() for t in model.parameters())
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{args.model} ({params:,} parameters, vocabulary {args.vocab}), source {args.src_len} tokens, "
          f"{args.tokens} tokens decoded, median of {args.rounds} alternated round(s)")
    print(f"{'batch':>5}  {'cache s':>8}  {'no cache s':>10}  {'cache tok/s':>11}  {'no cache tok/s':>14}  "
          f"{'speed-up':>8}  same tokens")
    with torch.no_grad():
        for batch in args.batch:
            r = compare(model, batch, args)
            rate = {name: batch * args.tokens / r[name] for name in ("cache", "no cache")}
            print(f"{batch:>5}  {r['cache']:>8.3f}  {r['no cache']:>10.3f}  {rate['cache']:>11.0f}  "
                  f"{rate['no cache']:>14.0f}  {r['no cache'] / r['cache']:>7.2f}×  {r['same']:.0%}")


if __name__ == "__main__":
    main()
