"""`vitkit decode`: target sequences for source sequences read from standard input, with a seq2seq checkpoint.

    echo "a b c" | vitkit decode runs/copy/best.safetensors             # greedy
    vitkit decode runs/copy/best.safetensors --beam 4 < sources.txt     # beam search

One source a line, tokens separated by whitespace, in the run's vocabulary (saved in its record); one output line
for each, in the same order (a blank line gives a blank line). Lines are read and decoded --batch-size at a time,
each batch padded to its longest source, and every batch's outputs are written before the next is read.
"""
from __future__ import annotations

import sys
from itertools import islice
from typing import Iterable, Iterator

from ..errors import VitkitError


def add_parser(sub, name):
    p = sub.add_parser(name, help="decode sequences from standard input with a seq2seq checkpoint",
                       description="Read source sequences from standard input, one a line (tokens separated by "
                                   "whitespace, in the vocabulary of the run: a b c ... for the copy and reverse "
                                   "tasks), and print the model's output for each line, in order. Greedy decoding "
                                   "unless --beam is given.")
    p.add_argument("checkpoint", help="a checkpoint of a `vitkit train --objective seq2seq` run "
                                      "(e.g. runs/copy/best.safetensors)")
    p.add_argument("--beam", type=int, help="beam search with this many hypotheses per source (default: greedy; "
                                            "--beam 1 is greedy)")
    p.add_argument("--alpha", type=float, default=0.6, help="beam search's length penalty exponent, GNMT's "
                                                            "((5 + length) / 6)^alpha (default: 0.6)")
    p.add_argument("--max-len", type=int, help="most tokens to emit per source, EOS included (default: the longest "
                                               "target of the run, tgt_len - 1)")
    p.add_argument("--batch-size", type=int, default=64, help="lines read and decoded at a time (default: 64)")


def _check_options(args) -> None:
    for flag, value in (("--beam", args.beam), ("--max-len", args.max_len), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise VitkitError(f"{flag} must be at least 1, got {value}")


def seq2seq_record(ckpt) -> dict:
    """The checkpoint's data record, refused with the fix when it is not a seq2seq run's (no vocabulary)."""
    if "vocab" not in ckpt.data or "src_len" not in ckpt.data:  # (a captioning run has a vocabulary, no sources)
        raise VitkitError(f"{ckpt.path} ({ckpt.model_name}) was not trained with --objective seq2seq, so it has no "
                          f"vocabulary; vitkit decode reads seq2seq runs: pass the checkpoint of one, e.g. from "
                          f"`vitkit train --objective seq2seq --data copy`")
    return ckpt.data


def _max_len(args, model, record: dict) -> int:
    """--max-len, or the run's longest target after BOS (sequence + EOS); within the Transformer's positions."""
    from ..models.transformer import Transformer

    max_len = args.max_len or record["tgt_len"] - 1
    if isinstance(model, Transformer) and max_len > model.cfg.max_len:
        raise VitkitError(f"--max-len {max_len} is more than the {model.cfg.max_len} positions this Transformer was "
                          f"built with; pass --max-len {model.cfg.max_len} or less")
    return max_len


def encode_line(vocab, number: int, text: str, src_len: int) -> list[int]:
    """The ids of one input line; an error naming the line for an unknown token or a source the run never saw
    the like of (longer than its src_len)."""
    try:
        ids = vocab.encode(text)
    except ValueError as e:
        raise VitkitError(f"line {number} of the input: {e}") from None
    if len(ids) > src_len:
        raise VitkitError(f"line {number} of the input has {len(ids)} tokens, but the run trained on sources of at "
                          f"most {src_len}; split the line into shorter ones")
    return ids


def batches(lines: Iterable[str], size: int) -> Iterator[list[tuple[int, str]]]:
    """(line number from 1, stripped text) pairs, `size` lines at a time."""
    numbered = enumerate((line.strip() for line in lines), 1)
    while batch := list(islice(numbered, size)):
        yield batch


def decode_batch(model, sources: list[list[int]], max_len: int, beam: int | None, alpha: float) -> list[list[int]]:
    """Output ids (after BOS) of each source, padded together to the longest: greedy, or beam search."""
    if not sources:
        return []
    import torch

    from ..data.sequences import pad
    from ..generate import beam_search, greedy

    src = torch.stack([pad(ids, max(map(len, sources))) for ids in sources])  # (B, S)
    out = greedy(model, src, max_len) if beam is None else beam_search(model, src, max_len, beam=beam, alpha=alpha)
    return out.tolist()


def run(args) -> int:
    from ..data.sequences import Vocabulary
    from ..weights import load_checkpoint

    _check_options(args)
    ckpt = load_checkpoint(args.checkpoint)
    record = seq2seq_record(ckpt)
    vocab, model = Vocabulary(record["vocab"]), ckpt.build_model()
    max_len = _max_len(args, model, record)
    for batch in batches(sys.stdin, args.batch_size):
        sources = {n: encode_line(vocab, n, text, record["src_len"]) for n, text in batch if text}
        outputs = dict(zip(sources, decode_batch(model, list(sources.values()), max_len, args.beam, args.alpha)))
        for n, _ in batch:
            print(vocab.decode(outputs[n]) if n in outputs else "")
        sys.stdout.flush()
    return 0
