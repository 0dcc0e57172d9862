"""The `vitkit` command, end to end, in-process (and once as a real subprocess)."""
import json
import subprocess
import sys

import pytest

from vitkit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [None, "models", "train", "eval", "predict", "data", "convert", "export", "cost", "explain", "bench"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main(([command] if command else []) + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: vitkit" in out
    if command == "train":
        for flag in ("--model", "--data", "--epochs", "--lr", "--resume", "--label-smoothing", "--opt"):
            assert flag in out
        assert "peak learning rate" in out  # help text comes from TrainConfig's field comments


def test_models_lists_parameter_counts(capsys):
    code, out, _ = run(capsys, "models", "vit_*_patch16_224")
    assert code == 0
    assert "vit_tiny_patch16_224" in out and "5,717,416" in out and "86,567,656" in out
    assert "vit_base_patch32_224" not in out
    code, out, _ = run(capsys, "models", "vit_small_patch16_224", "--json")
    assert json.loads(out) == [{"name": "vit_small_patch16_224", "family": "vit", "params": 22050664,
                                "img_size": 224, "num_classes": 1000}]


def test_train_eval_predict_round_trip(capsys, tmp_path):
    runs = str(tmp_path / "runs")
    code, out, _ = run(capsys, "train", "--epochs", "2", "--name", "t", "--runs-dir", runs, "--no-progress",
                       "--opt", "depth=1", "--opt", "embed_dim=32", "--opt", "num_heads=2", "--batch-size", "128")
    assert code == 0 and "epoch   2/2" in out
    best = tmp_path / "runs/t/best.safetensors"
    assert best.exists() and (tmp_path / "runs/t/metrics.jsonl").exists()

    code, out, _ = run(capsys, "eval", str(best), "--json")
    result = json.loads(out)
    assert code == 0 and result["images"] == 359 and 0 <= result["top1"] <= 1
    assert sum(map(sum, result["confusion"])) == 359  # the same validation split as training's

    code, out, _ = run(capsys, "data", "export", "digits", str(tmp_path / "held"), "--split", "val", "--count", "4")
    assert code == 0
    images = sorted(str(p) for p in (tmp_path / "held").rglob("*.png"))
    assert len(images) == 4
    code, out, _ = run(capsys, "predict", str(best), *images, "--top-k", "3", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == images
    for r in rows:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert all(t["label"] in [str(i) for i in range(10)] for t in r["top"])
    code, out, _ = run(capsys, "predict", str(best), *images, "--top-k", "10", "--json", "--bf16")
    assert code == 0
    for fp32, bf16 in zip(rows, (json.loads(line) for line in out.splitlines())):
        p32 = {t["label"]: t["prob"] for t in fp32["top"]}
        p16 = {t["label"]: t["prob"] for t in bf16["top"]}
        assert all(abs(p16[k] - v) < 0.03 for k, v in p32.items())  # bf16 autocast: close to fp32, not equal

    # the same run name again is refused rather than overwritten
    code, _, err = run(capsys, "train", "--epochs", "1", "--name", "t", "--runs-dir", runs, "--no-progress")
    assert code == 2 and "--resume" in err and "--overwrite" in err


def test_errors_are_messages_not_tracebacks(capsys, tmp_path):
    code, _, err = run(capsys, "predict", str(tmp_path / "missing.safetensors"), "x.png")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "nowhere"), "--no-progress")
    assert code == 2 and "nowhere" in err and "not an embedded data set" in err
    code, _, err = run(capsys, "train", "--model", "vit_base_patch16_22", "--no-progress")
    assert code == 2 and "vit_base_patch16_224" in err  # a suggestion
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "empty"), "--no-progress")
    assert code == 2 and "empty" in err


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "vitkit.cli", "data"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "digits" in proc.stdout and "mnist" in proc.stdout
