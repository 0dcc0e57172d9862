"""The seq2seq objective on the one trainer: its data, label smoothing, the Noam schedule, training and resume."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit.data import sequences as seq
from vitkit.data.datasets import DataError
from vitkit.train import TrainConfig, train
from vitkit.train.optim import lr_factor, noam
from vitkit.train.seq2seq import smoothed_cross_entropy
from vitkit.weights import load_checkpoint

from resume import assert_resumes_exactly

TINY = dict(d_model=32, num_heads=2, d_ff=64, encoder_layers=1, decoder_layers=1)


def test_smoothing_spreads_epsilon_over_the_vocabulary_except_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g)
    target = torch.tensor([[3, 4, 0, 0], [5, 6, 2, 0], [1, 2, 3, 4]])
    eps = 0.1
    q = torch.full((3, 4, 7), eps / 5)  # V - 2 = 5 tokens share ε: all but the target and padding
    q.scatter_(-1, target[..., None], 1 - eps)
    q[..., 0] = 0.0
    per_token = -(q * logits.log_softmax(-1)).sum(-1)
    want = per_token[target != 0].mean()
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, eps, 0), want)
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.0, 0),
                               F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0))
    assert abs(float(q[target != 0].sum(-1).mean()) - 1) < 1e-6  # q is a distribution on the real targets


def test_noam_is_the_paper_s_rate_over_its_peak():
    d, w = 512, 4000
    peak = d ** -0.5 * w ** -0.5
    for step in (0, 1, 99, 3999, 4000, 20_000, 100_000):
        s = step + 1
        paper = d ** -0.5 * min(s ** -0.5, s * w ** -1.5)
        assert math.isclose(peak * noam(step, w), paper, rel_tol=1e-12)
    assert noam(w - 1, w) == 1.0 and lr_factor(w - 1, 10 * w, w, schedule="noam") == 1.0
    assert math.isclose(peak, 7.0e-4, rel_tol=0.02)


def test_the_synthetic_tasks_copy_and_reverse_and_never_share_sequences_between_splits():
    copy = seq.SyntheticTask("copy", 50, 0, 1)
    rev = seq.SyntheticTask("reverse", 50, 0, 1)
    for i in range(50):
        src, tgt = copy[i]
        n = int((src != seq.PAD).sum())
        assert 1 <= n <= 10 and src.shape == (10,) and tgt.shape == (12,)
        assert tgt[0] == seq.BOS and tgt[n + 1] == seq.EOS and torch.equal(tgt[1:n + 1], src[:n])
        r_src, r_tgt = rev[i]
        assert torch.equal(r_src, src) and torch.equal(r_tgt[1:n + 1], src[:n].flip(0))
        assert (src[:n] >= 3).all() and (src[:n] < 11).all()
    other = seq.SyntheticTask("copy", 50, 0, 2)
    assert any(not torch.equal(copy[i][0], other[i][0]) for i in range(50))
    assert torch.equal(copy[(7, (0,))][0], copy[7][0])  # the runtime asks for (index, key)


def test_text_pairs_build_a_vocabulary_and_name_a_bad_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a b c\tc b a\n\nb c\tc b\n")
    pairs = seq.read_pairs(path)
    vocab = seq.Vocabulary.from_texts([t for p in pairs for t in p])
    assert vocab.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and len(vocab) == 7
    ds = seq.TextPairs(pairs, vocab, 3, 5)
    src, tgt = ds[0]
    assert vocab.decode(src) == "a b c" and vocab.decode(tgt[1:]) == "c b a"
    assert vocab.encode("a zebra") == [vocab.ids["a"], seq.UNK]
    path.write_text("a b c\tc b a\nno tab here\n")
    with pytest.raises(DataError, match=r"pairs.tsv:2 has no tab"):
        seq.read_pairs(path)


def s2s_cfg(tmp_path, name, epochs=2, data="copy", **kw):
    return TrainConfig(objective="seq2seq", data=data, runs_dir=str(tmp_path), name=name, epochs=epochs,
                       batch_size=32, train_size=256, progress=False, threads=1, schedule="noam", warmup_epochs=1,
                       lr=3e-3, model_overrides=dict(TINY), **kw)


def test_seq2seq_trains_the_copy_task_on_the_runtime_and_resumes_exactly(tmp_path):
    first = train(s2s_cfg(tmp_path, "first", epochs=3), log=lambda *_: None)
    rows = first.metrics
    assert all(0 <= r["val_exact"] <= 1 and 0 <= r["val_token_acc"] <= 1 for r in rows)
    assert rows[-1]["val_nll"] < rows[0]["val_nll"] < math.log(11)  # learning, and better than uniform
    ckpt = load_checkpoint(first.run_dir / "best.safetensors")
    assert ckpt.model_name == "transformer_small" and ckpt.overrides["tgt_vocab"] == 11

    assert_resumes_exactly(lambda name, epochs: s2s_cfg(tmp_path, name, epochs), tmp_path, epochs=3)


def test_seq2seq_reads_a_text_file_and_saves_its_vocabulary(tmp_path):
    path = tmp_path / "pairs.tsv"
    words = "the cat sat on a mat dog ran".split()
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(120):
        n = int(torch.randint(1, 5, (1,), generator=g))
        src = [words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g)]
        lines.append(" ".join(src) + "\t" + " ".join(reversed(src)))
    path.write_text("\n".join(lines) + "\n")
    run = train(TrainConfig(objective="seq2seq", data=str(path), runs_dir=str(tmp_path), name="text", epochs=1,
                            batch_size=16, progress=False, threads=1, model_overrides=dict(TINY)),
                log=lambda *_: None)
    record = load_checkpoint(run.run_dir / "best.safetensors").data
    assert record["task"] == "text" and record["vocab"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert set(words) <= set(record["vocab"])


# ---- Bahdanau's RNN with additive attention ------------------------------------------------------------------------
def test_additive_attention_is_v_tanh_ws_plus_uh_with_padding_masked():
    from vitkit.models.rnn import AdditiveAttention
    torch.manual_seed(0)
    attn = AdditiveAttention(4, 6, 5)
    s, h = torch.randn(2, 4), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, True], [True, True, False]])[:, None, None, :]
    context, weights = attn(s, h, mask)
    for b in range(2):
        e = torch.stack([attn.v(torch.tanh(attn.W(s[b]) + attn.U(h[b, j]))).squeeze() for j in range(3)])
        if b == 1:
            e[2] = float("-inf")
        alpha = e.softmax(0)
        torch.testing.assert_close(weights[b], alpha)
        torch.testing.assert_close(context[b], (alpha[:, None] * h[b]).sum(0))
    assert weights[1, 2] == 0


def test_the_rnn_decodes_like_the_transformer_does():
    import vitkit
    from vitkit.generate import beam_search, greedy
    torch.manual_seed(0)
    model = vitkit.create_model("rnn_bahdanau", embed_dim=16, hidden=16, attn_dim=16).eval()
    src = torch.randint(3, 11, (4, 7))
    src[2, 4:] = 0
    out = greedy(model, src, 9)
    assert torch.equal(out, greedy(model, src, 9, cache=False))
    assert torch.equal(beam_search(model, src, 9, beam=1), out)
    assert torch.equal(beam_search(model, src, 9, beam=3), beam_search(model, src, 9, beam=3, cache=False))
    alone = greedy(model, src[2:3, :4], 9)
    assert torch.equal(out[2, :alone.shape[1]], alone[0])  # padding changes nothing
    weights = model.align(src, torch.randint(3, 11, (4, 5)))
    assert weights.shape == (4, 5, 7) and torch.allclose(weights.sum(-1), torch.ones(4, 5))
    assert (weights[2, :, 4:] == 0).all()


def test_alignment_on_source_scores_a_perfect_anti_diagonal_as_one():
    from vitkit.train.seq2seq import alignment_on_source
    src = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    weights = torch.zeros(2, 5, 4)
    for b, n in enumerate((3, 2)):
        weights[b, torch.arange(n), torch.arange(n - 1, -1, -1)] = 1.0
    assert alignment_on_source(weights, src, "reverse") == {"mass_on_source_position": 1.0,
                                                            "argmax_on_source_position": 1.0}
    assert alignment_on_source(weights, src, "copy")["mass_on_source_position"] == pytest.approx(1 / 5)


def test_a_bahdanau_run_writes_its_alignment(tmp_path):
    cfg = TrainConfig(objective="seq2seq", model="rnn_bahdanau", data="reverse", runs_dir=str(tmp_path), name="r",
                      epochs=1, batch_size=32, train_size=128, progress=False, threads=1,
                      model_overrides=dict(embed_dim=16, hidden=16, attn_dim=16))
    run = train(cfg, log=lambda *_: None)
    import json
    figures = json.loads((run.run_dir / "alignment.json").read_text())
    assert 0 <= figures["mass_on_source_position"] <= 1 and figures["model"] == "rnn_bahdanau"
    assert (run.run_dir / "alignment.png").stat().st_size > 5_000
