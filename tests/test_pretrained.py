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


# ---- every dialect: damaged input gets a CheckpointError that names the file and what is wrong ---------------------
def test_class_names_that_do_not_match_the_head_are_refused():
    from vitkit.weights.converted import Converted
    from vitkit.weights.pretrained import fit_pretrained
    state = vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3).state_dict()
    converted = Converted("vit_pico_patch2_8", state, {"depth": 1, "num_classes": 3}, ["a", "b"], "hf", "folder")
    with pytest.raises(CheckpointError, match="names 2 classes for a head with 3 outputs"):
        fit_pretrained(converted)
    model, _ = fit_pretrained(converted, num_classes=5)  # a new head: the old names do not apply
    assert model.pretrained_classes is None


def test_a_damaged_file_without_a_name_is_called_damaged(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_safetensors(path, vitkit.create_model("vit_pico_patch2_8").state_dict())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        vitkit.load_pretrained(path)  # not "pass the model name": no name would help


def test_a_folder_whose_config_names_no_model_type_says_so(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
    save_safetensors(tmp_path / "model.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="config.json names no model_type"):
        vitkit.load_pretrained(tmp_path)


@pytest.mark.parametrize("field,value", [("hidden_size", "192"), ("image_size", [32]), ("num_attention_heads", 0),
                                         ("model_type", {"vit": 1}), ("layer_norm_eps", [1e-6]), ("id2label", [1])])
def test_a_config_json_field_of_the_wrong_type_is_named(tmp_path, field, value):
    import json
    from vitkit.weights import hf
    folder = hf.write(vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=1), "vit_tiny_patch16_224",
                      tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=f"config.json has {field}=") as err:
        vitkit.load_pretrained(folder)
    assert str(folder) in str(err.value)


def test_a_hugging_face_config_no_model_can_be_built_from_is_refused_naming_the_folder(tmp_path):
    import json
    from vitkit.weights import hf
    folder = hf.write(vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=1), "vit_tiny_patch16_224",
                      tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))  # 192 is not 5 heads
    with pytest.raises(CheckpointError, match="num_heads") as err:
        vitkit.load_pretrained(folder)
    assert str(folder) in str(err.value)


def _npz(path, **arrays):
    import numpy as np
    base = {"embedding/kernel": np.zeros((2, 2, 1, 8), np.float32), "embedding/bias": np.zeros(8, np.float32),
            "cls": np.zeros((1, 1, 8), np.float32),
            "Transformer/posembed_input/pos_embedding": np.zeros((1, 17, 8), np.float32),
            "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel": np.zeros((8, 16), np.float32)}
    np.savez(path, **{**base, **arrays})
    return path


def test_an_npz_whose_arrays_have_the_wrong_rank_is_refused(tmp_path):
    import numpy as np
    path = _npz(tmp_path / "odd.npz", **{
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel": np.zeros(8, np.float32)})
    with pytest.raises(CheckpointError, match="shapes do not fit together as a JAX ViT") as err:
        vitkit.load_pretrained(path)
    assert str(path) in str(err.value)


def test_an_npz_with_damaged_first_bytes_is_not_taken_for_a_pickle(tmp_path):
    path = _npz(tmp_path / "release.npz")
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not begin as an .npz") as err:
        vitkit.load_pretrained(path)
    assert "pickle" not in str(err.value)  # numpy's own message suggests loading it with allow_pickle


def test_a_torchvision_state_dict_missing_a_tensor_is_refused_naming_it(tmp_path):
    state = {"class_token": torch.zeros(1, 1, 8), "encoder.pos_embedding": torch.zeros(1, 17, 8),
             "encoder.layers.encoder_layer_0.ln_1.weight": torch.ones(8)}  # no conv_proj: the file is incomplete
    torch.save(state, tmp_path / "vit_b_16.pth")
    with pytest.raises(CheckpointError, match="torchvision vit state dict without 'conv_proj.weight'"):
        vitkit.load_pretrained(tmp_path / "vit_b_16.pth")
