"""load_pretrained: one entry point for every checkpoint dialect, fitted to a new resolution or head."""
import pytest
import torch

import vitkit
from parity import TOL, perturb
from vitkit.layers.rel_pos import resize_rel_pos_table
from vitkit.weights import CheckpointError, save_checkpoint, save_safetensors


def _timm_checkpoint(timm, tmp_path, name, **kw):
    """A timm model with random weights (zero/one-init tensors perturbed), saved as safetensors."""
    model = perturb(timm.create_model(name, pretrained=False, **kw)).eval()
    path = tmp_path / f"{name}.safetensors"
    save_safetensors(path, model.state_dict())
    return model, path


def _timm_at(timm, name, path, **kw):
    """timm's own path for a checkpoint at another size: pretrained=True from a local file, which runs
    timm's checkpoint_filter_fn (position-embedding resampling, relative-table resizing)."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kw).eval()


@pytest.mark.timm
@pytest.mark.parametrize("name,kw,new", [
    ("vit_small_patch16_224", {"depth": 2}, {"img_size": 384}),
    ("vit_small_patch16_224", {"depth": 2, "reg_tokens": 4}, {"img_size": (256, 192)}),
    ("deit_small_distilled_patch16_224", {"depth": 2}, {"img_size": 320}),
    ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1)}, {"img_size": 384, "window_size": 12}),
    ("beit_base_patch16_224", {"depth": 2}, {"img_size": 384}),
])
def test_a_224_checkpoint_at_a_new_size_matches_timms_own_path(timm, tmp_path, name, kw, new):
    _, path = _timm_checkpoint(timm, tmp_path, name, **kw)
    theirs = _timm_at(timm, name, path, **kw, **new)
    ours = vitkit.create_model(name, checkpoint=str(path), **kw, **new).eval()
    h, w = (new["img_size"], new["img_size"]) if isinstance(new["img_size"], int) else new["img_size"]
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert (a - b).abs().max().item() <= TOL
    assert b.std() > 0.01  # the comparison is not between two constants


@pytest.mark.timm
@pytest.mark.parametrize("old,new,extra", [(7, 12, 0), (12, 7, 0), (14, 24, 3), (7, 7, 0)])
def test_relative_position_table_resize_matches_timm(timm, old, new, extra):
    table = torch.randn((2 * old - 1) ** 2 + extra, 3)
    ref = timm.layers.resize_rel_pos_bias_table(table, (new, new), ((2 * new - 1) ** 2 + extra, 3))
    ours = resize_rel_pos_table(table, new, num_extra=extra)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if extra:
        torch.testing.assert_close(ours[-extra:], table[-extra:], rtol=0, atol=0)  # [CLS] rows kept as they are


def test_a_new_head_for_fine_tuning_keeps_everything_else(tmp_path):
    source = vitkit.create_model("vit_pico_patch2_8", depth=2)
    save_safetensors(tmp_path / "w.safetensors", source.state_dict())
    model = vitkit.load_pretrained(tmp_path / "w.safetensors", "vit_pico_patch2_8", depth=2, num_classes=3)
    assert model.head.weight.shape == (3, 64) and not model.training
    for k, v in model.state_dict().items():
        if not k.startswith("head"):
            assert torch.equal(v, source.state_dict()[k]), k
    assert model.pretrained_classes is None


def test_a_vitkit_checkpoint_needs_no_name_and_brings_its_classes(tmp_path):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3)
    save_checkpoint(tmp_path / "c.safetensors", model=model, model_name="vit_pico_patch2_8",
                    overrides={"depth": 1, "num_classes": 3}, data={"classes": ["a", "b", "c"]})
    loaded = vitkit.load_pretrained(tmp_path / "c.safetensors")
    assert loaded.pretrained_classes == ["a", "b", "c"]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_unclear_input_gets_a_clear_error(tmp_path):
    save_safetensors(tmp_path / "plain.safetensors", vitkit.create_model("vit_pico_patch2_8").state_dict())
    with pytest.raises(CheckpointError, match="pass the model name"):
        vitkit.load_pretrained(tmp_path / "plain.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a Hugging Face model folder"):
        vitkit.load_pretrained(tmp_path / "folder")
    with pytest.raises(CheckpointError, match="does not exist"):
        vitkit.load_pretrained(tmp_path / "missing.safetensors", "vit_pico_patch2_8")
    with pytest.raises(CheckpointError, match="does not fit vit_tiny_patch16_224"):
        vitkit.load_pretrained(tmp_path / "plain.safetensors", "vit_tiny_patch16_224")


def test_batchnorm_counters_missing_from_older_files_are_supplied(tmp_path):
    model = vitkit.create_model("resnet18", num_classes=4).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old_torchvision_resnet18.pth")
    loaded = vitkit.load_pretrained(tmp_path / "old_torchvision_resnet18.pth", "resnet18", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
