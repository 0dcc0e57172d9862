"""The sequence-to-sequence objective: an encoder–decoder Transformer on the one trainer.

    vitkit train --objective seq2seq --data copy --epochs 10 --schedule noam        # transformer_small by default
    vitkit train --objective seq2seq --data reverse
    vitkit train --objective seq2seq --data pairs.tsv                               # 'source<TAB>target' lines

--data names a synthetic task (data/sequences.py: `copy`, `reverse`; --train-size sequences, default 10,000,
and 1,000 fresh ones to validate) or a text file of pairs (its vocabulary, built from the training lines, is
saved in the run's record, so `vitkit decode` reads words). Teacher forcing: the decoder reads BOS + the target
and predicts the target + EOS; the loss is cross-entropy with label smoothing (--label-smoothing, default the
paper's 0.1) spread over the vocabulary except padding, and padded positions are not trained on.

    val_exact      share of validation sequences that greedy decoding reproduces exactly (picks best)
    val_token_acc  share of target tokens predicted right under teacher forcing
    val_nll        cross-entropy per target token, unsmoothed

After the last epoch the run folder gets alignment.png (the alignment matrix of a validation sequence: the
Bahdanau model's additive attention, or the Transformer's last cross-attention averaged over heads) and
alignment.json: for the synthetic tasks, the mean weight each target token puts on the source position it
copies (copy: the same position; reverse: the mirrored one), and how often that position has the largest weight.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import sequences as seq
from ..explain.plots import plot_alignment
from ..generate import greedy
from ..registry import create_model, model_config
from .objective import Objective, register_objective

TRAIN_KEY, VAL_KEY = 0x5452, 0x5641  # "TR", "VA": synthetic sequences of the two splits never share a stream
TASK_SIZE, VAL_SIZE = 10_000, 1_000


def smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:
    """Mean over the non-padding targets of -Σ_j q_j log p_j, where q puts 1 - ε on the target, ε / (V - 2) on
    every other token but padding, and 0 on padding (the Annotated Transformer's LabelSmoothing; its KL
    divergence differs from this by the entropy of q, a constant)."""
    logp = logits.float().log_softmax(-1)  # (..., V)
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    if smoothing:
        others = -logp.sum(-1) + logp[..., pad_id] - nll  # Σ over tokens that are neither padding nor the target
        nll = (1 - smoothing) * nll + smoothing / (logp.shape[-1] - 2) * others
    return nll[target != pad_id].mean()


@register_objective
class Seq2Seq(Objective):
    name = "seq2seq"
    score = "val_exact"

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        if cfg.data in seq.TASKS:
            size = cfg.train_size or TASK_SIZE
            self.train_set = seq.SyntheticTask(cfg.data, size, cfg.seed, TRAIN_KEY)
            self.val_set = seq.SyntheticTask(cfg.data, VAL_SIZE, cfg.seed, VAL_KEY)
            self.vocab = self.train_set.vocab
            src_len, tgt_len = self.train_set.max_len, self.train_set.max_len + 2
        else:
            pairs = seq.read_pairs(cfg.data)
            random.Random(cfg.seed).shuffle(pairs)
            n_val = max(1, round(cfg.val_fraction * len(pairs)))
            train, val = pairs[n_val:], pairs[:n_val]
            if cfg.train_size:
                train = train[:cfg.train_size]
            self.vocab = seq.Vocabulary.from_texts([t for pair in train for t in pair])
            src_len = max(len(s.split()) for s, _ in pairs)
            tgt_len = max(len(t.split()) for _, t in pairs) + 2
            self.train_set = seq.TextPairs(train, self.vocab, src_len, tgt_len)
            self.val_set = seq.TextPairs(val, self.vocab, src_len, tgt_len)
        vocab_size = len(self.vocab)
        self.record = {"task": cfg.data if cfg.data in seq.TASKS else "text", "vocab": self.vocab.tokens}
        self.tgt_len = tgt_len
        self.model_name = cfg.model
        base = {**(init.overrides if init and init.model_name == cfg.model else {}), **cfg.model_overrides}
        mcfg = model_config(cfg.model, **base)
        self.model_overrides = {**base, "src_vocab": vocab_size, "tgt_vocab": vocab_size,
                                "max_len": max(mcfg.max_len, src_len, tgt_len)}
        self.record.update(src_len=src_len, tgt_len=tgt_len)

    def describe(self) -> str:
        what = f"the {self.cfg.data} task" if self.record["task"] != "text" else f"pairs of {self.cfg.data}"
        return (f"{len(self.train_set)} train / {len(self.val_set)} val sequences of {what}, vocabulary "
                f"{self.model_overrides['tgt_vocab']}")

    def build_model(self) -> nn.Module:
        model = create_model(self.model_name, **self.model_overrides)
        if self.init is not None:
            model.load_state_dict(self.init.state)
            self.log(f"initialised from {self.init.source_path} ({self.init.source}, {self.init.model_name})")
        return model.train()

    def loss(self, model, batch, gen):
        src, tgt = batch
        logits = model(src, tgt[:, :-1])
        return smoothed_cross_entropy(logits, tgt[:, 1:], self.cfg.label_smoothing, seq.PAD), {}

    @torch.no_grad()
    def evaluate(self, model, loader, procs):
        raw = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        sums = torch.zeros(5, dtype=torch.float64)  # nll · tokens, correct tokens, tokens, exact, sequences
        for src, tgt in loader:
            src, tgt = src.to(self.device), tgt.to(self.device)
            target = tgt[:, 1:]
            logits = model(src, tgt[:, :-1]).float()
            real = target != seq.PAD
            n = int(real.sum())
            nll = smoothed_cross_entropy(logits, target, 0.0, seq.PAD).item()
            correct = ((logits.argmax(-1) == target) & real).sum().item()
            out = greedy(raw, src, target.shape[1])
            out = torch.nn.functional.pad(out, (0, target.shape[1] - out.shape[1]), value=seq.PAD)
            exact = (out == target).all(dim=1).sum().item()
            sums += torch.tensor([nll * n, correct, n, exact, len(src)], dtype=torch.float64)
        model.train(was_training)
        procs.all_reduce(sums)
        return {"val_exact": float(sums[3] / sums[4]), "val_token_acc": float(sums[1] / sums[2]),
                "val_nll": float(sums[0] / sums[2])}

    def finish(self, model, run_dir: Path) -> None:
        raw = getattr(model, "module", model)
        was_training = raw.training
        raw.eval()
        src, tgt = next(iter(DataLoader(self.val_set, batch_size=256)))
        weights = raw.align(src.to(self.device), tgt[:, :-1].to(self.device)).float().cpu()  # (B, T, S)
        raw.train(was_training)
        result = {"model": self.model_name, "sequences": len(src)}
        if self.record["task"] in seq.TASKS:
            result.update(alignment_on_source(weights, src, self.record["task"]))
            self.log(f"alignment: target tokens put {result['mass_on_source_position']:.3f} of their attention on the "
                     f"source position they {self.record['task']} (the largest weight there for "
                     f"{result['argmax_on_source_position']:.3f} of them)")
        (run_dir / "alignment.json").write_text(json.dumps(result, indent=2) + "\n")
        i = int((src != seq.PAD).sum(1).argmax())  # the longest sequence of the batch
        n, m = int((src[i] != seq.PAD).sum()), int((tgt[i, 1:] != seq.PAD).sum())
        fig = plot_alignment(weights[i, :m, :n], self._words(src[i, :n]), self._words(tgt[i, 1:m + 1]),
                             f"{self.model_name} on a held-out {self.record['task']} sequence")
        fig.savefig(run_dir / "alignment.png", dpi=100)

    def _words(self, ids: Tensor) -> list[str]:
        return [self.vocab.tokens[int(i)] for i in ids]


def alignment_on_source(weights: Tensor, src: Tensor, task: str) -> dict[str, float]:
    """weights (B, T, S) of target tokens over source positions; for each real target token i of n (EOS
    excluded), the position it copies is i (copy) or n - 1 - i (reverse). Returns the mean weight there and the
    share of tokens whose largest weight is there."""
    mass, hits, count = 0.0, 0, 0
    for b in range(len(src)):
        n = int((src[b] != seq.PAD).sum())
        expected = torch.arange(n) if task == "copy" else torch.arange(n - 1, -1, -1)
        w = weights[b, :n]  # (n, S): the n tokens before EOS
        mass += float(w[torch.arange(n), expected].sum())
        hits += int((w.argmax(-1) == expected).sum())
        count += n
    return {"mass_on_source_position": mass / count, "argmax_on_source_position": hits / count}
