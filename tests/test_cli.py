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


@pytest.mark.parametrize("command", [None, "models", "train", "eval", "predict", "data", "convert", "export", "cost", "explain", "bench", "decode", "caption"])
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
                                "inputs": "image", "img_size": 224, "num_classes": 1000}]
    code, out, _ = run(capsys, "models", "transformer_small")
    assert code == 0 and "tokens" in out and "927,115" in out


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


# ---- start-up: only the command being run is imported ------------------------------------------------------------
def help_in_a_fresh_process(argv: list[str], check: str) -> str:
    """Run `vitkit ARGV` (a --help) in a new interpreter; print which heavy modules it imported (torch, command
    modules) and whether `check` is in the help text."""
    code = ("import sys, contextlib, io\n"
            "from vitkit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            f"        main({argv!r})\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('vitkit.cli.'))\n"
            f"print(heavy, {check!r} in out.getvalue())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_help_imports_neither_torch_nor_any_command():
    assert help_in_a_fresh_process(["--help"], "train a model") == "[] True"


def test_train_help_does_not_import_torch():
    """Its options come from TrainConfig, which is plain Python; the trainer is imported only to train."""
    assert help_in_a_fresh_process(["train", "--help"], "--layer-decay") == "['vitkit.cli.train'] True"


def test_the_quick_help_lists_what_the_full_parser_does():
    from vitkit.cli import build_parser
    assert build_parser(full=False).format_help() == build_parser().format_help()  # the one-line summaries agree


def test_a_config_folder_is_named_with_the_file_to_pass(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path)]) != 0
    assert "is a folder; pass the file inside it" in capsys.readouterr().err


# ---- errors: one line, the problem and the fix --------------------------------------------------------------------
def test_os_errors_name_the_problem_and_the_fix(capsys, tmp_path, monkeypatch):
    import errno
    import os

    import vitkit.data

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "digits" / "0" / "0000.png"))
    monkeypatch.setattr(vitkit.data, "export_images", full_disk)
    code, _, err = run(capsys, "data", "export", "digits", str(tmp_path / "digits"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no space is left on the disk" in err and "0000.png" in err and "free some space" in err


def test_a_folder_where_a_file_was_expected_is_named(capsys, pico, tmp_path):
    ckpt, _, _ = pico
    (tmp_path / "out").mkdir()  # the destination of a conversion is a folder
    code, _, err = run(capsys, "convert", str(ckpt), str(tmp_path / "out"), "--no-check")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'out'} is a folder, where a file was expected: pass the path of a file" in err


def test_errors_from_other_libraries_say_where_and_how_to_see_the_traceback(capsys, monkeypatch):
    import vitkit.cli.data as data_cmd

    def broken(args):
        return 1 / 0  # a bug, raised outside vitkit's own code paths as far as the message is concerned
    monkeypatch.setattr(data_cmd, "run", broken)
    code, _, err = run(capsys, "data")
    assert code == 2 and err.count("\n") == 1
    assert "ZeroDivisionError: division by zero" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):  # --debug: the traceback, before or after the command
        main(["--debug", "data"])
    with pytest.raises(ZeroDivisionError):
        main(["data", "--debug"])


def test_an_onnxruntime_error_is_one_line():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    from vitkit.cli.errors import describe
    from vitkit.export import export_onnx
    from vitkit import create_model
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(create_model("vit_pico_patch2_8").eval(), Path(tmp) / "m.onnx", img_size=8, in_chans=1)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception) as info:
            session.run(None, {"images": torch.zeros(1, 3, 8, 8).numpy()})  # 3 channels for a 1-channel graph
    text = describe(info.value)
    assert text.startswith("InvalidArgument in onnxruntime: ") and text.endswith("--debug to see the traceback")
    assert "\n" not in text


# ---- every source load_pretrained takes; predict over folders and globs, to CSV or JSON -------------------------
@pytest.fixture
def pico(tmp_path):
    """A vitkit checkpoint of vit_pico_patch2_8 trained on nothing, and 6 digit images in class folders."""
    import torch

    from vitkit import create_model
    from vitkit.data import export_images, load_embedded
    from vitkit.weights import save_checkpoint

    model = create_model("vit_pico_patch2_8", depth=1)
    with torch.no_grad():
        model.head.weight.normal_(std=1.0)  # spread the probabilities
    data = {"classes": [str(i) for i in range(10)], "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5],
            "source": "digits", "seed": 0, "val_fraction": 0.2}
    ckpt = tmp_path / "pico.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_pico_patch2_8", overrides={"depth": 1}, data=data)
    images = export_images(load_embedded("digits"), tmp_path / "imgs", indices=list(range(6)))
    return ckpt, tmp_path / "imgs", sorted(str(p) for p in images)


def test_predict_takes_folders_and_globs_and_streams_them_in_batches(capsys, pico):
    ckpt, folder, images = pico
    code, out, _ = run(capsys, "predict", str(ckpt), *images, "--json", "--top-k", "2")
    expected = [json.loads(line) for line in out.splitlines()]
    for args in ([str(folder)], [str(folder / "*" / "*.png")], [str(folder / "**" / "*.png")]):
        code, out, _ = run(capsys, "predict", str(ckpt), *args, "--json", "--top-k", "2", "--batch-size", "4")
        got = [json.loads(line) for line in out.splitlines()]  # read 4 + 2: the same answers, to rounding
        assert code == 0 and [r["image"] for r in got] == images
        for a, b in zip(got, expected):
            assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
            assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


def test_predict_writes_csv_and_json(capsys, pico, tmp_path):
    import csv

    ckpt, folder, images = pico
    code, out, _ = run(capsys, "predict", str(ckpt), str(folder), "--json", "--top-k", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    code, _, err = run(capsys, "predict", str(ckpt), str(folder), "--top-k", "3", "--out", str(tmp_path / "p.csv"))
    assert code == 0 and "wrote 6 prediction(s)" in err
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(table) == 6 * 3 and table[0].keys() == {"image", "rank", "label", "prob"}
    assert [(t["label"], float(t["prob"])) for t in table[:3]] == [(t["label"], t["prob"]) for t in rows[0]["top"]]
    code, _, _ = run(capsys, "predict", str(ckpt), str(folder), "--top-k", "3", "--out", str(tmp_path / "p.json"))
    assert json.loads((tmp_path / "p.json").read_text()) == rows  # one JSON document
    code, out, _ = run(capsys, "predict", str(ckpt), images[0], "--format", "csv")
    assert out.splitlines()[0] == "image,rank,label,prob" and len(out.splitlines()) == 1 + 5


def test_predict_names_the_argument_that_is_wrong(capsys, pico, tmp_path):
    ckpt, folder, _ = pico
    code, _, err = run(capsys, "predict", str(ckpt), "nosuch.png")
    assert code == 2 and "image nosuch.png does not exist; check the path" in err and "no longer" not in err
    code, _, err = run(capsys, "predict", str(ckpt), str(folder / "*.jpg"))
    assert code == 2 and "no file matches" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "predict", str(ckpt), str(tmp_path / "empty"))
    assert code == 2 and "holds no images" in err
    code, _, err = run(capsys, "predict", str(ckpt), str(folder), "--out", str(tmp_path / "p.txtx"))
    assert code == 2 and "cannot tell the format" in err and not (tmp_path / "p.txtx").exists()


def test_a_header_without_its_model_record_is_named(capsys, pico, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    ckpt, folder, images = pico
    with safe_open(str(ckpt), "pt") as f:
        meta = dict(f.metadata())
    del meta["model"]
    bad = tmp_path / "no_model.safetensors"
    save_file(load_file(str(ckpt)), str(bad), metadata=meta)
    code, _, err = run(capsys, "predict", str(bad), images[0])
    assert code == 2 and str(bad) in err and "model" in err
    assert err.strip() != "vitkit predict: error: model" and len(err) > 80  # a sentence, not a key


def test_eval_shows_full_class_names_and_top5_only_for_more_than_5_classes(capsys, tmp_path):
    from vitkit import create_model
    from vitkit.data import export_images, load_embedded
    from vitkit.weights import save_checkpoint

    names = ["zero_long_name", "one_long_name", "two_long_name"]
    digits = load_embedded("digits")
    keep = [i for i in range(60) if int(digits.labels[i]) < 3]
    export_images(digits, tmp_path / "three", indices=keep)
    for old, new in zip(["0", "1", "2"], names):
        (tmp_path / "three" / old).rename(tmp_path / "three" / new)
    names = sorted(names)
    model = create_model("vit_pico_patch2_8", depth=1, num_classes=3)
    ckpt = tmp_path / "three.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_pico_patch2_8", overrides={"depth": 1, "num_classes": 3},
                    data={"classes": names, "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5]})
    code, out, _ = run(capsys, "eval", str(ckpt), "--data", str(tmp_path / "three"))
    assert code == 0 and "top-1" in out and "top-5" not in out
    for i, name in enumerate(names):
        assert f"{i} {name}" in out  # whole names, numbered columns
    code, out, _ = run(capsys, "eval", str(ckpt), "--data", str(tmp_path / "three"), "--json")
    assert json.loads(out)["top5"] is None


def test_a_bare_key_error_is_not_shown_as_a_bare_word():
    from vitkit.cli.errors import describe

    def lookup():
        return {}["model"]
    try:
        lookup()
    except KeyError as e:
        assert describe(e).startswith("KeyError: 'model'; run again with --debug")  # raised here, in a test
    from vitkit.registry import get_entry
    try:
        get_entry("vit_nosuch")
    except KeyError as e:
        assert describe(e).startswith("unknown model 'vit_nosuch'")  # vitkit's own sentence, unquoted
