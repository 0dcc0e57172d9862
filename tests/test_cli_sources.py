"""Every command takes every source load_pretrained takes: a Hugging Face folder saved by transformers exports to
ONNX, predicts and evaluates; and `vitkit convert --to hf` writes the preprocessor_config.json that
AutoImageProcessor reads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main

from parity import add_noise, perturb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

LABELS = {0: "cat", 1: "dog", 2: "fox"}


@pytest.fixture
def hf_folder(tmp_path, transformers):
    """A small random ViTForImageClassification saved by transformers, and the model."""
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, layer_norm_eps=1e-6, id2label=LABELS)
    model = perturb(transformers.ViTForImageClassification(config), params={"*": add_noise(0.05)}).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


def _images(folder, n=3, size=(40, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(gen.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_export_takes_a_hugging_face_folder(hf_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vitkit.export import OnnxClassifier

    folder, theirs = hf_folder
    out = tmp_path / "vit.onnx"
    assert main(["export", str(folder), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "from" in printed and "(hf)" in printed and "at batch 5" in printed  # verified against PyTorch
    onnx_model = OnnxClassifier(out)
    assert onnx_model.metadata["classes"] == ["cat", "dog", "fox"] and onnx_model.metadata["img_size"] == [32, 32]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = theirs(pixel_values=x).logits
    torch.testing.assert_close(onnx_model(x), expected, atol=1e-4, rtol=0)  # transformers' logits, from the file

    images = _images(tmp_path / "imgs")
    results = []
    for source in (folder, out):  # predict from the folder itself and from its export: the same answers
        assert main(["predict", str(source), *images, "--json", "--top-k", "3"]) == 0
        results.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    for a, b in zip(*results):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert {t["label"] for t in a["top"]} == {"cat", "dog", "fox"}


def test_eval_takes_a_hugging_face_folder_with_data(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    for name in ("cat", "dog", "fox"):
        _images(tmp_path / "data" / name, n=2)
    assert main(["eval", str(folder), "--data", str(tmp_path / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["classes"] == ["cat", "dog", "fox"] and result["top5"] is None
    assert main(["eval", str(folder)]) == 2  # no training split to rebuild: the message says to pass --data
    assert "--data" in capsys.readouterr().err


def test_convert_to_hf_writes_a_preprocessor_config_autoimageprocessor_reads(tmp_path, transformers, capsys):
    import vitkit
    from vitkit.data import normalize
    from vitkit.train import eval_transform
    from vitkit.weights import save_checkpoint

    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, embed_dim=48, depth=1, num_heads=3,
                                num_classes=3)
    data = {"classes": ["cat", "dog", "fox"], "img_size": [32, 32], "in_chans": 3, "mean": [0.4, 0.5, 0.6],
            "std": [0.2, 0.25, 0.3], "crop_pct": 0.875}
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_tiny_patch16_224",
                    overrides=dict(img_size=32, embed_dim=48, depth=1, num_heads=3, num_classes=3), data=data)
    assert main(["convert", str(ckpt), str(tmp_path / "hf"), "--to", "hf", "--no-check"]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert config["image_mean"] == data["mean"] and config["crop_size"] == {"height": 32, "width": 32}

    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255
    ours = eval_transform(data)(pixels)  # vitkit's evaluation: short side to 32 / 0.875 = 36, centre 32×32
    assert theirs.shape == ours.shape == (3, 32, 32)
    # the same crop and normalisation; they differ by PIL's rounding of resized pixels to 8 bits (measured: mean
    # 0.005, max 0.02 after dividing by std 0.2)
    assert (theirs - ours).abs().mean() < 0.01 and (theirs - ours).abs().max() < 0.05
    assert (theirs - normalize(torch.zeros(3, 32, 32), data["mean"], data["std"])).abs().mean() > 0.5  # not blank
