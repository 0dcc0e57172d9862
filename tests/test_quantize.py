"""int8 inference: quantize_int8 (PyTorch) and the int8 ONNX export compute the fp32 model's function, with int8
Linear layers, and `vitkit predict/eval/export/bench` expose them. Accuracy figures on a trained model are in the
README (measured, not asserted); here a briefly trained digits model must keep its top-1 answers."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import vitkit
from vitkit.cli import main
from vitkit.quantize import QuantizationError, compare_predictions, quantize_int8

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


def test_quantize_int8_replaces_every_linear_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    quantized = [m for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(quantized) == len(linears) == 2 * 2 + 2 * 2 + 1  # qkv, proj, fc1, fc2 per block; the head
    assert not any(isinstance(m, nn.Linear) and not type(m).__module__.startswith("torch.ao") for m in q.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was quantised
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x), q(x)
    assert not torch.equal(want, got)  # it really runs in int8 ...
    assert (want - got).abs().max() < 0.05 * (want.max() - want.min())  # ... and computes the same function


def test_quantize_int8_refuses_a_model_off_the_cpu():
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY)
    model.to("meta")
    with pytest.raises(QuantizationError, match="CPU only"):
        quantize_int8(model)


def test_compare_predictions_counts_agreement_accuracy_and_drift():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits[x[:, 0].long()]

    ref = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    cand = ref.clone()
    cand[3] = torch.tensor([2.0, 0.0])  # image 3 flips to class 0
    loader = [(torch.arange(4.0)[:, None], torch.tensor([0, 1, 1, 1]))]
    r = compare_predictions(Fixed(ref), Fixed(cand), loader)
    assert r["images"] == 4 and r["top1_agreement"] == 0.75
    assert r["top1_reference"] == 0.75 and r["top1_candidate"] == 0.5 and r["top1_drop_points"] == 25.0
    p_hi = torch.tensor([2.0, 0.0]).softmax(-1)[0].item()
    assert r["max_prob_drift"] == pytest.approx(2 * p_hi - 1, abs=1e-6)
    assert r["mean_prob_drift"] == pytest.approx((2 * p_hi - 1) * 2 / 8, abs=1e-6)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small ViT trained for a few epochs on the built-in digits: real images with confident answers."""
    from vitkit.train import TrainConfig, train
    tmp = tmp_path_factory.mktemp("int8")
    run = train(TrainConfig(runs_dir=str(tmp), name="d", epochs=6, progress=False, threads=1,
                            model_overrides={"depth": 2}), log=lambda *_: None)
    return run.run_dir / "best.safetensors", tmp


def test_eval_int8_on_a_trained_checkpoint_reports_agreement_and_drift(digits_run, capsys):
    ckpt, _ = digits_run
    assert main(["eval", str(ckpt), "--int8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    q = r["int8"]
    assert q["images"] == r["images"] == 359 and q["top1_reference"] == pytest.approx(r["top1"])
    assert q["top1_agreement"] >= 0.97 and abs(q["top1_drop_points"]) <= 2.0
    assert 0 < q["max_prob_drift"] < 0.5
    assert main(["eval", str(ckpt), "--int8"]) == 0
    assert "int8 (PyTorch dynamic quantisation): top-1" in capsys.readouterr().out


def test_predict_int8_gives_the_fp32_answers(digits_run, capsys):
    ckpt, tmp = digits_run
    from vitkit.data import export_images, load_embedded
    images = [str(p) for p in export_images(load_embedded("digits"), tmp / "img", indices=[0, 1, 2, 3])]
    out = {}
    for flag in ([], ["--int8"]):
        assert main(["predict", str(ckpt), *images, "--top-k", "1", "--json", *flag]) == 0
        out[bool(flag)] = [json.loads(line)["top"][0] for line in capsys.readouterr().out.splitlines()]
    assert [t["label"] for t in out[False]] == [t["label"] for t in out[True]]
    assert all(abs(a["prob"] - b["prob"]) < 0.1 for a, b in zip(out[False], out[True]))
    assert main(["predict", str(ckpt), images[0], "--int8", "--bf16"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_export_int8_writes_a_smaller_file_that_eval_and_predict_read(digits_run, capsys):
    ckpt, tmp = digits_run
    fp32, int8 = tmp / "fp32.onnx", tmp / "int8.onnx"
    assert main(["export", str(ckpt), "--onnx", str(fp32)]) == 0
    assert main(["export", str(ckpt), "--onnx", str(int8), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8 weights" in printed and "onnxruntime int8 vs PyTorch fp32" in printed
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(props["vitkit"])["classes"] == [str(i) for i in range(10)]  # the metadata survived
    assert main(["eval", str(fp32), "--int8", "--json"]) == 0  # the file's own int8 form against it
    q = json.loads(capsys.readouterr().out)["int8"]
    assert q["path"] == "onnxruntime dynamic quantisation" and q["top1_agreement"] >= 0.97
    assert main(["eval", str(int8), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(q["top1_candidate"])
    from vitkit.data import export_images, load_embedded
    image = str(export_images(load_embedded("digits"), tmp / "one", indices=[5])[0])
    assert main(["predict", str(int8), image, "--int8"]) == 2  # --int8 quantises PyTorch checkpoints
    assert "vitkit export CKPT --onnx OUT --int8" in capsys.readouterr().err


def test_an_int8_file_of_another_model_is_refused(digits_run, tmp_path):
    from vitkit.infer import load_model
    from vitkit.quantize import verify_int8_onnx
    ckpt, tmp = digits_run
    int8 = tmp_path / "int8.onnx"
    assert main(["export", str(ckpt), "--onnx", str(int8), "--int8", "--no-verify"]) == 0
    model = load_model(str(ckpt)).model
    assert verify_int8_onnx(model, int8)["top1_agreement"] >= 0.75  # its own model: accepted
    with torch.no_grad():
        model.head.weight.mul_(-1)  # another model: the answers flip
    with pytest.raises(QuantizationError, match="strays from the fp32 model"):
        verify_int8_onnx(model, int8)
