"""`vitkit decode`: a seq2seq checkpoint reads sources from standard input, one a line, in-process."""
import io

import pytest
import torch

from vitkit import create_model
from vitkit.cli import main
from vitkit.data.sequences import Vocabulary, pad
from vitkit.generate import beam_search, greedy
from vitkit.train import TrainConfig, train
from vitkit.weights import load_checkpoint, save_checkpoint

LINES = ["a b c", "", "h g", "b b b b a", "c", "  d e  "]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """best.safetensors of a tiny Transformer trained on the copy task (about 4 s), its model and vocabulary.
    After 3 epochs of 1,024 sequences it emits tokens (after 1 epoch of 128 every output is EOS at once, a blank
    line, and comparing blank lines would show nothing)."""
    tmp = tmp_path_factory.mktemp("runs")
    train(TrainConfig(objective="seq2seq", data="copy", runs_dir=str(tmp), name="c", epochs=3, batch_size=32,
                      train_size=1024, lr=5e-3, schedule="noam", warmup_epochs=1, progress=False, threads=1,
                      model_overrides=dict(d_model=32, num_heads=2, d_ff=64, encoder_layers=1, decoder_layers=1)),
          log=lambda *_: None)
    path = tmp / "c" / "best.safetensors"
    ckpt = load_checkpoint(path)
    model = create_model(ckpt.model_name, **ckpt.overrides)
    model.load_state_dict(ckpt.state)
    return path, model.eval(), Vocabulary(ckpt.data["vocab"]), ckpt.data


def decode(capsys, monkeypatch, stdin, *argv):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["decode", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def expected(model, vocab, lines, search, **kw):
    """What `search` gives for the non-blank lines as one batch, decoded; blank lines stay blank."""
    ids = [vocab.encode(line) for line in lines if line.strip()]
    src = torch.stack([pad(i, max(map(len, ids))) for i in ids])
    out = iter(search(model, src, **kw).tolist())
    return [vocab.decode(next(out)) if line.strip() else "" for line in lines]


def test_decode_prints_the_greedy_output_of_each_line_in_order(capsys, monkeypatch, copy_run):
    path, model, vocab, record = copy_run
    code, out, err = decode(capsys, monkeypatch, "\n".join(LINES) + "\n", path)
    assert code == 0, err
    want = expected(model, vocab, LINES, greedy, max_len=record["tgt_len"] - 1)
    assert out.splitlines() == want and len(want) == len(LINES) and want[1] == ""
    assert all(set(line.split()) <= set(vocab.tokens[3:]) for line in want)
    assert sum(map(bool, want)) >= 3  # the model emits tokens: the comparison means something
    code, small, _ = decode(capsys, monkeypatch, "\n".join(LINES), path, "--batch-size", 2)  # no final newline
    assert code == 0 and small == out  # batching changes nothing
    code, one, _ = decode(capsys, monkeypatch, "\n".join(LINES), path, "--beam", 1)
    assert code == 0 and one == out  # a beam of one is greedy decoding


def test_decode_runs_beam_search_with_its_options(capsys, monkeypatch, copy_run):
    path, model, vocab, _ = copy_run
    code, out, err = decode(capsys, monkeypatch, "\n".join(LINES), path, "--beam", 3, "--alpha", 1.0,
                            "--max-len", 5)
    assert code == 0, err
    assert out.splitlines() == expected(model, vocab, LINES, beam_search, max_len=5, beam=3, alpha=1.0)
    assert all(len(line.split()) <= 5 for line in out.splitlines())


def test_decode_refuses_a_checkpoint_that_is_not_a_seq2seq_run(capsys, monkeypatch, tmp_path):
    path = tmp_path / "pico.safetensors"
    data = {"classes": [str(i) for i in range(10)], "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5]}
    save_checkpoint(path, model=create_model("vit_pico_patch2_8", depth=1), model_name="vit_pico_patch2_8",
                    overrides={"depth": 1}, data=data)
    code, out, err = decode(capsys, monkeypatch, "a b\n", path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "was not trained with --objective seq2seq" in err and "vitkit decode reads seq2seq runs" in err


def test_decode_names_the_line_of_an_unknown_token_or_a_too_long_source(capsys, monkeypatch, copy_run):
    path, _, _, record = copy_run
    code, _, err = decode(capsys, monkeypatch, "a b\nb zebra c\n", path)
    assert code == 2 and "line 2" in err and "'zebra' not in the vocabulary" in err and "a b c d" in err
    too_long = " ".join(["a"] * (record["src_len"] + 1))
    code, _, err = decode(capsys, monkeypatch, f"{too_long}\n", path)
    assert code == 2 and "line 1" in err and f"at most {record['src_len']}" in err
    assert f"has {record['src_len'] + 1} tokens" in err


@pytest.mark.parametrize("flag", ["--beam", "--batch-size", "--max-len"])
def test_decode_refuses_counts_below_one(capsys, monkeypatch, copy_run, flag):
    code, _, err = decode(capsys, monkeypatch, "a\n", copy_run[0], flag, 0)
    assert code == 2 and f"{flag} must be at least 1, got 0" in err


def test_decode_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["decode", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: vitkit decode" in out and "--beam" in out
