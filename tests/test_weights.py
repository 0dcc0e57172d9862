"""Loading weights: safe by default, strict, and clear about what is wrong."""
import pytest
import torch

import vitkit
from vitkit.weights import (CheckpointError, load_checkpoint, load_weights_into, read_state_dict, save_checkpoint,
                            save_safetensors)

SMALL = {"depth": 2}


class ArbitraryCode:
    """An object whose unpickling runs code: it leaves a marker file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_safetensors_round_trip_gives_the_same_logits(tmp_path):
    a = vitkit.create_model("vit_tiny_patch16_224", **SMALL).eval()
    save_safetensors(tmp_path / "w.safetensors", a.state_dict())
    b = vitkit.create_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.safetensors"), **SMALL).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_plain_pytorch_state_dicts_load_through_weights_only(tmp_path):
    a = vitkit.create_model("vit_pico_patch2_8")
    torch.save({"state_dict": a.state_dict(), "epoch": 3}, tmp_path / "w.pth")  # a common training-script layout
    state = read_state_dict(tmp_path / "w.pth")
    assert state.keys() == a.state_dict().keys()
    torch.save({f"module.{k}": v for k, v in a.state_dict().items()}, tmp_path / "ddp.pth")  # saved from DDP
    assert read_state_dict(tmp_path / "ddp.pth").keys() == a.state_dict().keys()


def test_a_pickle_that_runs_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "code-ran"
    weights = vitkit.create_model("vit_pico_patch2_8").state_dict()
    torch.save({"state_dict": weights, "extra": ArbitraryCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="trust_pickle=True") as err:
        read_state_dict(tmp_path / "evil.pth")
    assert "evil.pth" in str(err.value)
    assert not marker.exists()  # nothing was executed
    state = read_state_dict(tmp_path / "evil.pth", trust_pickle=True)
    assert marker.exists() and state.keys() == weights.keys()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_get_a_clear_error_naming_them(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    weights = vitkit.create_model("vit_pico_patch2_8").state_dict()
    if suffix == ".safetensors":
        save_safetensors(path, weights)
    else:
        torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_state_dict(tmp_path)


def test_a_checkpoint_for_another_architecture_is_reported_in_full(tmp_path):
    save_safetensors(tmp_path / "tiny.safetensors", vitkit.create_model("vit_tiny_patch16_224", **SMALL).state_dict())
    small = vitkit.create_model("vit_small_patch16_224", **SMALL)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights_into(small, tmp_path / "tiny.safetensors")
    msg = str(err.value)
    assert "vit_small_patch16_224" in msg and "wrong shape" in msg and "another size" in msg
    assert "pos_embed (checkpoint (1, 197, 192), model (1, 197, 384))" in msg
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # nothing loaded half-way

    other_classes = vitkit.create_model("vit_tiny_patch16_224", num_classes=10, **SMALL)
    with pytest.raises(CheckpointError, match="only the classifier differs"):
        load_weights_into(other_classes, tmp_path / "tiny.safetensors")
    other_size = vitkit.create_model("vit_tiny_patch16_224", img_size=384, **SMALL)
    with pytest.raises(CheckpointError, match="another image size"):
        load_weights_into(other_size, tmp_path / "tiny.safetensors")

    deeper = vitkit.create_model("vit_tiny_patch16_224", depth=3)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): blocks\.2\."):
        load_weights_into(deeper, tmp_path / "tiny.safetensors")


def test_vitkit_checkpoint_carries_its_model_and_data(tmp_path):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3)
    data = {"classes": ["cat", "dog", "eel"], "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5]}
    save_checkpoint(tmp_path / "c.safetensors", model=model, model_name="vit_pico_patch2_8",
                    overrides={"depth": 1, "num_classes": 3, "img_size": (8, 8)}, data=data)
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.classes == ["cat", "dog", "eel"] and ckpt.overrides["img_size"] == (8, 8)
    rebuilt = ckpt.build_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    # the model part also loads as plain weights
    load_weights_into(vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3), tmp_path / "c.safetensors")


def test_plain_weights_are_not_mistaken_for_a_vitkit_checkpoint(tmp_path):
    save_safetensors(tmp_path / "plain.safetensors", vitkit.create_model("vit_pico_patch2_8").state_dict())
    with pytest.raises(CheckpointError, match="not a vitkit checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


@pytest.mark.timm
def test_a_timm_checkpoint_file_loads_by_name_and_matches_timm(tmp_path, timm):
    reference = timm.create_model("vit_small_patch16_224", depth=2).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    ours = vitkit.create_model("vit_small_patch16_224", depth=2, checkpoint=str(tmp_path / "timm.pth")).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-4
