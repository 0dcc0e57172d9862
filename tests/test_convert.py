"""vitkit convert: between dialects, with the numbers checked against the source library."""
import pytest
import torch

import vitkit
from parity import perturb
from vitkit.cli import main
from vitkit.weights import load_checkpoint, read_state_dict
from vitkit.weights.convert import convert


@pytest.mark.timm
def test_timm_to_vitkit_to_timm_is_exact_and_checked(timm, tmp_path):
    source = perturb(timm.create_model("vit_small_patch16_224", depth=2)).eval()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    report = convert(tmp_path / "timm.pth", tmp_path / "ours.safetensors", name="vit_small_patch16_224",
                     overrides={"depth": 2})
    assert report.source == "timm" and report.reference.startswith("timm")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert load_checkpoint(tmp_path / "ours.safetensors").overrides == {"depth": 2}  # recorded for the next reader

    back = convert(tmp_path / "ours.safetensors", tmp_path / "back.safetensors", to="timm")
    original, returned = source.state_dict(), read_state_dict(tmp_path / "back.safetensors")
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[k], returned[k]) for k in original)
    assert back.max_abs_diff is not None and back.max_abs_diff <= 1e-4


def test_vitkit_to_timm_to_vitkit_is_exact(tmp_path, capsys):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1)
    from vitkit.weights import save_checkpoint
    save_checkpoint(tmp_path / "a.safetensors", model=model, model_name="vit_pico_patch2_8", overrides={"depth": 1},
                    data={"classes": [str(i) for i in range(10)]})
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--to", "timm"]) == 0
    assert main(["convert", str(tmp_path / "b.safetensors"), str(tmp_path / "c.safetensors"),
                 "--name", "vit_pico_patch2_8", "--no-check"]) == 2  # a plain state dict does not record depth=1
    err = capsys.readouterr().err
    assert "does not fit vit_pico_patch2_8" in err and "missing key(s): blocks.1." in err
    assert main(["convert", str(tmp_path / "b.safetensors"), str(tmp_path / "c.safetensors"),
                 "--name", "vit_pico_patch2_8", "--opt", "depth=1"]) == 0
    again = load_checkpoint(tmp_path / "c.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state.items())
    out = vitkit.load_pretrained(tmp_path / "b.safetensors", "vit_pico_patch2_8", depth=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in out.state_dict().items())


def test_convert_without_a_name_for_a_plain_state_dict_says_so(tmp_path, capsys):
    torch.save(vitkit.create_model("vit_pico_patch2_8").state_dict(), tmp_path / "plain.pth")
    assert main(["convert", str(tmp_path / "plain.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "--name" in capsys.readouterr().err


def test_vitkit_to_hf_to_vitkit_is_exact_and_checked_against_transformers(tmp_path, transformers):
    from vitkit.weights import save_checkpoint
    model = perturb(vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=3))
    save_checkpoint(tmp_path / "a.safetensors", model=model, model_name="vit_tiny_patch16_224",
                    overrides={"depth": 1, "img_size": 32, "num_classes": 3}, data={"classes": ["x", "y", "z"]})
    to_hf = convert(tmp_path / "a.safetensors", tmp_path / "hf", to="hf")
    assert (tmp_path / "hf" / "config.json").exists()
    back = convert(tmp_path / "hf", tmp_path / "b.safetensors", to="vitkit")
    assert back.source == "hf" and back.reference.startswith("transformers")
    assert back.max_abs_diff is not None and back.max_abs_diff <= 1e-4
    assert to_hf.max_abs_diff is None or to_hf.max_abs_diff <= 1e-4
    returned = load_checkpoint(tmp_path / "b.safetensors")
    assert returned.classes == ["x", "y", "z"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in returned.state.items())
