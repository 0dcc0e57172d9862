"""Messages that used to mislead, each mended: what the user is told names the real problem and a fix that works."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers.config_checks import ConfigError
from vitkit.weights import CheckpointError, save_safetensors

from parity import TOL, perturb

BEIT = dict(embed_dim=32, depth=2, num_heads=2)


# ---- loading weights at another size ----------------------------------------------------------------------------
@pytest.mark.timm
def test_a_square_beit_loads_at_a_non_square_size_as_timm_resizes_it(timm, tmp_path):
    """BEiT 224 → (224, 320) used to report the checkpoint's table as (964, 4): vitkit's own square resize. The file
    holds (2·14-1)² + 3 = 732 rows; the window is the 14×20 patch grid, and timm resizes to it."""
    theirs = perturb(timm.create_model("beit_base_patch16_224", pretrained=False, img_size=64, **BEIT))
    save_safetensors(tmp_path / "beit.safetensors", theirs.state_dict())
    ours = vitkit.load_pretrained(tmp_path / "beit.safetensors", "beit_base_patch16_224", img_size=(64, 96), **BEIT)
    assert ours.blocks[0].attn.relative_position_bias_table.shape == ((2 * 4 - 1) * (2 * 6 - 1) + 3, 2)

    from timm.models.beit import checkpoint_filter_fn
    wide = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=(64, 96), **BEIT).eval()
    wide.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), wide), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert (ours(x) - wide(x)).abs().max() <= TOL


def _no_embed_class(state):  # timm's no_embed_class=True layout: position embeddings for the patches only
    return dict(state, pos_embed=state["pos_embed"][:, 1:])


@pytest.mark.parametrize("saved, edit", [
    (dict(reg_tokens=4), None),  # registers in the file, none in the model
    (dict(class_token=False, global_pool="avg"), None),
    (dict(), _no_embed_class),
], ids=["reg_tokens", "class_token", "no_embed_class"])
def test_a_prefix_token_mismatch_names_the_options_not_old_size(tmp_path, saved, edit):
    small = dict(img_size=32, patch_size=16, embed_dim=48, depth=1, num_heads=3)
    state = vitkit.create_model("vit_tiny_patch16_224", **small, **saved).state_dict()
    save_safetensors(tmp_path / "vit.safetensors", edit(state) if edit else state)
    with pytest.raises(CheckpointError) as info:
        vitkit.load_pretrained(tmp_path / "vit.safetensors", "vit_tiny_patch16_224", **dict(small, img_size=64))
    text = str(info.value)
    assert "old_size" not in text and "pos_embed" in text and "prefix token(s) and a 2² grid" in text
    assert "other class_token or reg_tokens options" in text


# ---- images of a size the model cannot take --------------------------------------------------------------------
def test_a_size_the_patch_does_not_divide_is_not_suggested_as_img_size():
    model = vitkit.create_model("vit_tiny_patch16_224", depth=1)
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 3, 225, 225))
    text = str(info.value)
    assert "img_size=(225, 225)" not in text and "resize the images to 224×224" in text
    assert "dynamic_img_size=True and dynamic_img_pad=True" in text and "240×240" in text
    with pytest.raises(ValueError, match=r"img_size=\(240, 240\), or dynamic_img_size=True"):  # 240 = 15 · 16: fine
        model(torch.randn(1, 3, 240, 240))
    padded = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=240, dynamic_img_size=True,
                                 dynamic_img_pad=True).eval()
    assert padded(torch.randn(1, 3, 225, 225)).shape == (1, 1000)  # what the message proposes works


def test_the_nearest_multiple_of_the_patch_is_suggested():
    with pytest.raises(ValueError, match=r"img_size 60×60 is no multiple of the patch size 16×16; build the model "
                                         r"with img_size=\(64, 64\)"):
        vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=60)
    model = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=64, dynamic_img_size=True)
    with pytest.raises(ValueError, match="resize it to 64×64"):
        model(torch.randn(1, 3, 60, 60))
    with pytest.raises(ValueError, match="resize it to 48×48"):  # 55 is nearer 48 than 64
        model(torch.randn(1, 3, 55, 55))


# ---- number types ----------------------------------------------------------------------------------------------
NAMES = ["vit_tiny_patch16_224", "resnet18", "convnext_atto", "swin_tiny_patch4_window7_224", "maxvit_tiny_tf_224"]


@pytest.mark.parametrize("name", NAMES)
def test_half_bfloat16_and_integer_images_get_vitkits_message(name):
    tiny = vitkit.get_entry(name).tiny or dict(img_size=32, depth=1, embed_dim=48, num_heads=3)
    model = vitkit.create_model(name, **tiny).eval()
    size = vitkit.model_config(name, **tiny).img_size
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(1, 3, h, w)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"images are {str(dtype)[6:]} but the model's weights are float32; "
                                             rf"convert the images \(x.to\(torch.float32\)\)"):
            model(x.to(dtype))
    with pytest.raises(ValueError, match=r"images are int64 \(integers\) but the model takes floats; .* / 255"):
        model((x * 255).long())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16()).shape[0] == 1  # under autocast any float type is fine
    assert model.bfloat16()(x.bfloat16()).dtype == torch.bfloat16  # and a bf16 model takes bf16 images


# ---- options no model can be built with ------------------------------------------------------------------------
@pytest.mark.parametrize("name, option, value", [
    ("vit_tiny_patch16_224", "depth", -1), ("vit_tiny_patch16_224", "patch_size", 0),
    ("vit_tiny_patch16_224", "in_chans", 0), ("vit_tiny_patch16_224", "img_size", 0),
    ("vit_tiny_patch16_224", "img_size", (224, 0)), ("vit_tiny_patch16_224", "num_heads", 0),
    ("vit_tiny_patch16_224", "depth", 2.5), ("vit_tiny_patch16_224", "num_classes", -1),
    ("vit_tiny_patch16_224", "drop_path_rate", 1.5), ("deit_tiny_patch16_224", "in_chans", 0),
    ("swin_tiny_patch4_window7_224", "patch_size", 0), ("swin_tiny_patch4_window7_224", "depths", (2, 0, 2, 2)),
    ("beit_base_patch16_224", "depth", -1), ("cait_xxs24_224", "patch_size", 0), ("resnet18", "layers", (2, -1)),
    ("convnext_atto", "dims", ()), ("maxvit_tiny_tf_224", "img_size", 0),
])
def test_an_impossible_option_is_named_with_the_registered_value(name, option, value):
    with pytest.raises(ConfigError) as info:
        vitkit.create_model(name, **{option: value})
    text = str(info.value)
    default = getattr(vitkit.get_entry(name).config, option)
    assert text.startswith(f"{name}: {option}={value!r} is not a valid option: ") and f"{option}={default!r}" in text
    assert isinstance(info.value, ValueError)


def test_heads_that_do_not_split_the_width_are_named():
    with pytest.raises(ConfigError, match="embed_dim=100 is not divisible by num_heads=3"):
        vitkit.create_model("vit_tiny_patch16_224", embed_dim=100, num_heads=3)


# ---- a reference library that is installed but cannot import -------------------------------------------------
def test_convert_tells_a_broken_library_from_a_missing_one(tmp_path, monkeypatch):
    from vitkit.weights.convert import _import_failure

    (tmp_path / "brokenlib").mkdir()
    (tmp_path / "brokenlib" / "__init__.py").write_text("import vitkit_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _import_failure("brokenlib") == ("brokenlib is installed but cannot be imported (it needs "
                                            "vitkit_no_such_dependency, which is not installed); fix that install to "
                                            "check against it")
    assert _import_failure("vitkit_no_such_library") == ("the source library vitkit_no_such_library is not installed "
                                                          "(pip install vitkit_no_such_library)")
    assert _import_failure("json") is None
