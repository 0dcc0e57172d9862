"""ONNX export: the graph runs in onnxruntime at any batch size, matches PyTorch, and predict can use it alone."""
import argparse
import json
import sys

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import vitkit  # noqa: E402
from vitkit.cli import export as export_cmd  # noqa: E402
from vitkit.cli import main  # noqa: E402
from vitkit.data import export_images, load_embedded  # noqa: E402
from vitkit.export import (OnnxError, OnnxUnavailable, export_onnx, read_onnx_metadata,  # noqa: E402
                          verify_onnx)
from vitkit.weights import save_checkpoint  # noqa: E402

TINY_VIT = dict(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3)
REQUIRED = {  # name → tiny overrides; every export takes a few seconds
    "vit_tiny_patch16_224": TINY_VIT,
    "deit_tiny_distilled_patch16_224": None,
    "swin_tiny_patch4_window7_224": None,
}
OTHERS = ["beit_base_patch16_224", "cait_xxs24_224", "convnext_tiny", "resnet18", "maxvit_tiny_tf_224",
          "coatnet_0_rw_224", "vit_small_r26_s32_224"]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny(name, **extra):
    """(model in eval mode, overrides, (H, W), in_chans) at smoke-test size."""
    overrides = dict(REQUIRED.get(name) or vitkit.get_entry(name).tiny, **extra)
    cfg = vitkit.model_config(name, **overrides)
    size = cfg.img_size if isinstance(cfg.img_size, tuple) else (cfg.img_size, cfg.img_size)
    return vitkit.create_model(name, **overrides).eval(), overrides, size, cfg.in_chans


def cli_export(*argv):
    """`vitkit export ARGV`, through the subcommand's own parser and run()."""
    parser = argparse.ArgumentParser(prog="vitkit")
    export_cmd.add_parser(parser.add_subparsers(dest="command"), "export")
    return export_cmd.run(parser.parse_args(["export", *argv]))


def check_export(name, tmp_path, **extra):
    model, _, (h, w), c = tiny(name, **extra)
    with torch.no_grad():
        for param in model.parameters():  # BEiT's head starts at ~0: make every model's logits differ
            param.add_(0.02 * torch.randn_like(param))
    path = export_onnx(model, tmp_path / f"{name}.onnx", img_size=(h, w), in_chans=c)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no temporary file left behind

    # Independently of verify_onnx: run the file in onnxruntime and compare with PyTorch.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [c, h, w]  # a symbolic batch axis
    for b in (1, 5):
        x = torch.randn(b, c, h, w)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert expected.std() > 1e-3  # the logits are not all equal, so the comparison means something

    diffs = verify_onnx(model, path)
    assert set(diffs) == {1, 5} and all(0 <= d <= 1e-4 for d in diffs.values())


@pytest.mark.parametrize("name", REQUIRED)
def test_export_runs_in_onnxruntime_at_batch_1_and_5_and_matches_pytorch(name, tmp_path):
    check_export(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_other_families_export_too(name, tmp_path):
    check_export(name, tmp_path)


def test_verify_fails_when_the_file_does_not_match_the_model(tmp_path):
    model, _, size, c = tiny("vit_tiny_patch16_224")
    path = export_onnx(model, tmp_path / "m.onnx", img_size=size, in_chans=c)
    with torch.no_grad():
        model.head.bias += 0.01  # the PyTorch model moves on; the file does not
    with pytest.raises(OnnxError, match=r"does not match PyTorch: max \|Δ\| 1\.00e-02 at batch 1"):
        verify_onnx(model, path)
    assert verify_onnx(model, path, atol=0.02)  # within a looser tolerance it passes


def test_predict_with_the_onnx_file_matches_predict_with_the_checkpoint(tmp_path, capsys):
    model, overrides, _, _ = tiny("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=10)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=1.0)  # spread the probabilities: no ties in the top-k
    data = {"classes": CLASSES, "mean": [0.3], "std": [0.4], "img_size": [16, 16], "in_chans": 1,
            "source": "digits"}
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_tiny_patch16_224", overrides=overrides, data=data)
    images = [str(p) for p in export_images(load_embedded("digits"), tmp_path / "img", indices=[0, 1, 2])]

    out = tmp_path / "tiny.onnx"
    assert cli_export(str(ckpt), "--onnx", str(out)) == 0
    printed = capsys.readouterr().out
    assert "vit_tiny_patch16_224 from" in printed and "RANDOM" not in printed
    assert "at batch 1" in printed and "at batch 5" in printed

    meta = read_onnx_metadata(out)  # metadata round trip, read by onnxruntime ...
    assert meta["model"] == "vit_tiny_patch16_224" and meta["classes"] == CLASSES
    assert (meta["mean"], meta["std"], meta["img_size"], meta["in_chans"]) == ([0.3], [0.4], [16, 16], 1)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}  # ... and by onnx
    assert json.loads(props["vitkit"]) == meta

    results = {}
    for source in (ckpt, out):
        assert main(["predict", str(source), *images, "--top-k", "3", "--json"]) == 0
        results[source] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from_ckpt, from_onnx = results[ckpt], results[out]
    assert [r["image"] for r in from_onnx] == images
    for a, b in zip(from_ckpt, from_onnx):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert all(t["label"] in CLASSES for t in b["top"]) and len(b["top"]) == 3
        for ta, tb in zip(a["top"], b["top"]):
            assert tb["prob"] == pytest.approx(ta["prob"], abs=1e-4)
    assert len({json.dumps(r["top"]) for r in from_onnx}) > 1  # different images, different answers

    assert main(["predict", str(out), images[0], "--top-k", "2"]) == 0  # the text format too
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 3 and lines[1].split()[0] == from_onnx[0]["top"][0]["label"]
    assert main(["predict", str(out), images[0], "--bf16"]) == 2  # autocast is PyTorch's; the file runs in fp32
    assert "--bf16" in capsys.readouterr().err


def test_export_from_a_model_name_says_the_weights_are_random(tmp_path, capsys):
    out = tmp_path / "pico.onnx"
    assert cli_export("vit_pico_patch2_8", "--onnx", str(out), "--no-verify") == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "not verified" in printed
    meta = read_onnx_metadata(out)
    assert meta["model"] == "vit_pico_patch2_8" and meta["img_size"] == [8, 8]
    assert meta["classes"] == [str(i) for i in range(vitkit.model_config("vit_pico_patch2_8").num_classes)]


def test_an_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="unknown model 'vit_tiny_patch16_22'; did you mean vit_tiny_patch16_224"):
        cli_export("vit_tiny_patch16_22", "--onnx", str(tmp_path / "m.onnx"))
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_cannot_be_exported_at_another_size(tmp_path):
    model, overrides, _, _ = tiny("vit_tiny_patch16_224")
    ckpt = tmp_path / "c.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_tiny_patch16_224", overrides=overrides,
                    data={"classes": [str(i) for i in range(1000)], "mean": [0.5] * 3, "std": [0.5] * 3,
                          "img_size": [32, 32], "in_chans": 3})
    with pytest.raises(ValueError, match="trained at 32×32; --img-size 64"):
        cli_export(str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--img-size", "64")


def test_predict_on_a_corrupt_or_foreign_onnx_file_names_the_file(tmp_path, capsys):
    model, _, size, c = tiny("vit_tiny_patch16_224")
    good = export_onnx(model, tmp_path / "good.onnx", img_size=size, in_chans=c)
    image = str(export_images(load_embedded("digits"), tmp_path / "img", indices=[0])[0])

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(good.read_bytes()[:2000])  # a truncated download
    assert main(["predict", str(corrupt), image]) == 2
    err = capsys.readouterr().err
    assert f"{corrupt} is not a readable ONNX model" in err and "corrupt" in err

    foreign = onnx.load(str(good))
    del foreign.metadata_props[:]  # an ONNX file from another tool
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    assert main(["predict", str(tmp_path / "foreign.onnx"), image]) == 2
    assert "foreign.onnx is an ONNX model but has no vitkit metadata" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "missing.onnx"), image]) == 2
    assert "missing.onnx does not exist" in capsys.readouterr().err


def test_missing_onnx_packages_say_what_to_install(tmp_path, monkeypatch):
    model, _, size, c = tiny("vit_tiny_patch16_224")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    with pytest.raises(ImportError, match="onnxscript.*pip install onnx onnxruntime onnxscript") as info:
        export_onnx(model, tmp_path / "m.onnx", img_size=size, in_chans=c)
    assert isinstance(info.value, OnnxUnavailable) and isinstance(info.value, RuntimeError)  # the CLI prints it
    assert not any(tmp_path.iterdir())


# ---- the destination, the opset and the metadata ---------------------------------------------------------------
def test_a_bad_destination_is_refused_before_any_work(tmp_path, monkeypatch):
    import vitkit.infer

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the destination is refused")
    monkeypatch.setattr(vitkit.infer, "load_model", no_load)
    (tmp_path / "exists").mkdir()
    with pytest.raises(OnnxError, match="is a folder; pass a file name such as .*model.onnx"):
        cli_export("vit_pico_patch2_8", "--onnx", str(tmp_path / "exists"))
    with pytest.raises(OnnxError, match="does not end in .onnx"):
        cli_export("vit_pico_patch2_8", "--onnx", str(tmp_path / "m.pt"))
    with pytest.raises(OnnxError, match="opset 99 does not exist: onnx .* knows opsets 1 to"):
        cli_export("vit_pico_patch2_8", "--onnx", str(tmp_path / "m.onnx"), "--opset", "99")


def test_the_opset_asked_for_is_written_or_refused(tmp_path):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1).eval()
    path = export_onnx(model, tmp_path / "m20.onnx", img_size=8, in_chans=1, opset=20)
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 20
    with pytest.raises(OnnxError, match="cannot be written as ONNX opset 3: onnx's converter says .*Gelu.*--opset 18"):
        export_onnx(model, tmp_path / "m3.onnx", img_size=8, in_chans=1, opset=3)
    assert not (tmp_path / "m3.onnx").exists()


def test_the_metadata_holds_no_local_path_and_must_fit_the_graph(tmp_path):
    model, overrides, _, _ = tiny("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=10)
    ckpt = tmp_path / "private" / "tiny.safetensors"
    ckpt.parent.mkdir()
    save_checkpoint(ckpt, model=model, model_name="vit_tiny_patch16_224", overrides=overrides,
                    data={"classes": CLASSES, "mean": [0.3], "std": [0.4], "img_size": [16, 16], "in_chans": 1,
                          "source": str(tmp_path / "private" / "photos"), "seed": 0, "val_fraction": 0.2})
    out = tmp_path / "tiny.onnx"
    assert cli_export(str(ckpt), "--onnx", str(out), "--no-verify") == 0
    text = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["vitkit"]
    assert "private" not in text and str(tmp_path) not in text and "checkpoint" not in json.loads(text)

    for field, value, says in (("img_size", [32, 32], "it says height 32, the graph takes 16"),
                               ("in_chans", 3, "it says channels 3, the graph takes 1"),
                               ("classes", CLASSES[:3], "it names 3 classes, the graph gives 10 logits")):
        edited = onnx.load(str(out))
        meta = json.loads(text)
        meta[field] = value
        if field == "in_chans":
            meta["mean"], meta["std"] = [0.5] * 3, [0.5] * 3
        for p in edited.metadata_props:
            if p.key == "vitkit":
                p.value = json.dumps(meta)
        onnx.save(edited, str(tmp_path / f"{field}.onnx"))
        with pytest.raises(OnnxError, match=f"metadata does not fit its graph \\({says}"):
            read_onnx_metadata(tmp_path / f"{field}.onnx")


def test_eval_accepts_the_onnx_file_and_gives_the_checkpoints_figures(tmp_path, capsys):
    model, overrides, _, _ = tiny("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, num_classes=10)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=1.0)
    ckpt = tmp_path / "digits.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_tiny_patch16_224", overrides=overrides,
                    data={"classes": [str(i) for i in range(10)], "mean": [0.5], "std": [0.5], "img_size": [8, 8],
                          "in_chans": 1, "source": "digits", "seed": 0, "val_fraction": 0.2})
    assert cli_export(str(ckpt), "--onnx", str(tmp_path / "digits.onnx"), "--no-verify") == 0
    capsys.readouterr()
    results = []
    for source in (ckpt, tmp_path / "digits.onnx"):
        assert main(["eval", str(source), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    a, b = results
    assert a["images"] == b["images"] == 359 and a["confusion"] == b["confusion"]  # the same split, rebuilt
    assert b["top1"] == pytest.approx(a["top1"]) and b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert main(["eval", str(tmp_path / "digits.onnx")]) == 0
    assert "may be truncated or corrupt" not in capsys.readouterr().err


def test_predict_refuses_nan_scores_from_an_onnx_file(tmp_path, capsys):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1).eval()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))  # the loaders refuse such weights; an exported file is not checked
    path = export_onnx(model, tmp_path / "nan.onnx", img_size=8, in_chans=1)
    image = str(export_images(load_embedded("digits"), tmp_path / "img", indices=[0])[0])
    assert main(["predict", str(path), image]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot convert float NaN" not in err and "non-finite scores" in err
