"""Hugging Face transformers checkpoints (vitkit.weights.hf): read into vitkit and written back.

Every transformers model here is built from a small config with random weights (nothing is downloaded), perturbed
so that no zero-initialised tensor (a relative position bias table, a distillation token) can hide a wrong mapping,
and saved with save_pretrained. Most configs set layer_norm_eps to vitkit's default (1e-6; Swin's default is already
1e-5); the "hub-eps" cases keep transformers' default 1e-12, which ViT and DeiT take through their norm_eps option
and the other families refuse (test_a_layer_norm_eps_a_family_cannot_take_is_refused).
"""
from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit.weights import CheckpointError, save_safetensors
from vitkit.weights import hf

from parity import TOL, add_noise, perturb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, layer_norm_eps=1e-6)
HUB_EPS = {k: v for k, v in SMALL.items() if k != "layer_norm_eps"}  # transformers' default: 1e-12
LABELS = {0: "cat", 1: "dog", 2: "fox", 3: "owl", 4: "yak"}

# id: (transformers class, config class, config options, input (C, H, W))
CASES = {
    "vit": ("ViTForImageClassification", "ViTConfig", dict(SMALL, id2label=LABELS), (3, 32, 32)),
    "vit-gray-oblong-nobias": ("ViTForImageClassification", "ViTConfig",
                               dict(SMALL, num_labels=4, num_channels=1, image_size=[32, 48], qkv_bias=False),
                               (1, 32, 48)),
    "vit-model-pooler": ("ViTModel", "ViTConfig", dict(SMALL, pooler_output_size=24), (3, 32, 32)),
    "vit-hub-eps": ("ViTForImageClassification", "ViTConfig", dict(HUB_EPS, num_labels=3), (3, 32, 32)),
    "deit-teacher-hub-eps": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(HUB_EPS, num_labels=3),
                             (3, 32, 32)),
    "deit": ("DeiTForImageClassification", "DeiTConfig", dict(SMALL, num_labels=5), (3, 32, 32)),
    "deit-teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(SMALL, num_labels=5), (3, 32, 32)),
    "deit-model": ("DeiTModel", "DeiTConfig", SMALL, (3, 32, 32)),
    "swin": ("SwinForImageClassification", "SwinConfig",
             dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 2, 1], num_heads=[1, 2, 2], window_size=4,
                  num_labels=5), (3, 32, 32)),
    "beit": ("BeitForImageClassification", "BeitConfig",
             dict(SMALL, num_labels=5, use_relative_position_bias=True), (3, 32, 32)),
    "beit-shared-abs-cls": ("BeitForImageClassification", "BeitConfig",
                            dict(SMALL, num_labels=5, use_shared_relative_position_bias=True,
                                 use_absolute_position_embeddings=True, use_mean_pooling=False,
                                 layer_scale_init_value=0.0), (3, 32, 32)),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=5, layer_norm_eps=1e-6),
                 (3, 32, 32)),
}


def save_hf(transformers, case: str, folder, **save_options):
    """A perturbed transformers model for CASES[case], saved into `folder`; (model in eval mode, input batch)."""
    cls, config_cls, options, (c, h, w) = CASES[case]
    model = getattr(transformers, cls)(getattr(transformers, config_cls)(**options))
    perturb(model, params={"*": add_noise(0.05)}).eval()  # every tensor, zero-initialised ones included
    model.save_pretrained(folder, **save_options)
    return model, torch.randn(2, c, h, w)


def hf_output(model, x):
    """Logits, or pooler_output for a headless *Model."""
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.pooler_output


def load(converted):
    model = vitkit.create_model(converted.model_name, **converted.overrides).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def max_diff(model, x, ref) -> float:
    assert (ref[0] - ref[1]).abs().max() > 1e-3  # the outputs depend on the input: a real comparison
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape
    return (out - ref).abs().max().item()


# ---- transformers → vitkit -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_a_transformers_folder_reads_into_vitkit_with_the_same_outputs(case, tmp_path, transformers):
    theirs, x = save_hf(transformers, case, tmp_path)
    assert hf.detect(tmp_path)
    converted = hf.read(tmp_path)
    assert converted.source == "hf"
    assert max_diff(load(converted), x, hf_output(theirs, x)) <= TOL


def test_resolution_picks_the_family_and_the_head(tmp_path, transformers):
    """What each transformers class becomes, and id2label → classes."""
    expect = {"vit": ("vit_", {"num_classes": 5}), "vit-model-pooler": ("vit_", {"num_classes": 0,
                                                                               "head_hidden_size": 24}),
              "deit": ("deit_", {"reg_tokens": 1, "num_classes": 5}),
              "deit-teacher": ("deit_", {"num_classes": 5}),
              "deit-model": ("deit_", {"reg_tokens": 1, "num_classes": 0, "head_hidden_size": 32})}
    for case, (prefix, wanted) in expect.items():
        save_hf(transformers, case, tmp_path / case)
        c = hf.read(tmp_path / case)
        assert c.model_name.startswith(prefix), case
        assert {k: c.overrides[k] for k in wanted} == wanted, case
        assert ("distilled" in c.model_name) == (case == "deit-teacher"), case
    assert hf.read(tmp_path / "vit").classes == list(LABELS.values())
    assert hf.read(tmp_path / "deit").classes is None  # transformers' placeholders LABEL_0 … are not names


def test_a_config_of_a_registered_size_resolves_to_its_name_with_no_overrides():
    base = dict(model_type="vit", architectures=["ViTForImageClassification"], hidden_size=768, num_hidden_layers=12,
                num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                id2label={str(i): f"c{i}" for i in range(1000)})
    assert hf.model_for_config(base) == ("vit_base_patch16_224", {})
    tiny = dict(base, hidden_size=192, num_attention_heads=3, intermediate_size=768, image_size=384)
    assert hf.model_for_config(tiny) == ("vit_tiny_patch16_384", {})
    assert hf.model_for_config(dict(tiny, id2label={"0": "a", "1": "b"})) == ("vit_tiny_patch16_384",
                                                                             {"num_classes": 2})
    swin = dict(model_type="swin", architectures=["SwinForImageClassification"], embed_dim=128,
                depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], id2label={str(i): str(i) for i in range(1000)})
    assert hf.model_for_config(swin) == ("swin_base_patch4_window7_224", {})
    teacher = dict(base, model_type="deit", architectures=["DeiTForImageClassificationWithTeacher"],
                   hidden_size=384, num_attention_heads=6, intermediate_size=1536)
    assert hf.model_for_config(teacher) == ("deit_small_distilled_patch16_224", {})
    pico = dict(base, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128,
                patch_size=4, image_size=28, num_channels=1, id2label={str(i): str(i) for i in range(10)})
    assert hf.model_for_config(pico) == ("vit_pico_patch4_28", {})
    name, overrides = hf.model_for_config(dict(pico, num_channels=3))  # not the grayscale model, for colour weights
    assert name != "vit_pico_patch4_28" and vitkit.get_entry(name).config.in_chans == 3


def test_a_reduced_depth_base_config_loads_as_the_registered_base_model(tmp_path, transformers):
    config = transformers.ViTConfig(num_hidden_layers=1, layer_norm_eps=1e-6, num_labels=3)  # base width, 224
    theirs = perturb(transformers.ViTForImageClassification(config), params={"*": add_noise(0.05)}).eval()
    theirs.save_pretrained(tmp_path)
    c = hf.read(tmp_path)
    assert (c.model_name, c.overrides) == ("vit_base_patch16_224", {"depth": 1, "num_classes": 3})
    x = torch.randn(2, 3, 224, 224)
    assert max_diff(load(c), x, hf_output(theirs, x)) <= TOL


def test_a_given_name_is_used_and_convnext_mlp_weights_fit_either_layout(tmp_path, transformers):
    theirs, x = save_hf(transformers, "convnext", tmp_path)
    as_conv, as_linear = hf.read(tmp_path, "convnext_atto"), hf.read(tmp_path, "convnext_tiny")
    assert as_conv.model_name == "convnext_atto" and as_linear.model_name == "convnext_tiny"
    key = "stages.0.blocks.0.mlp.fc1.weight"
    assert as_conv.state[key].ndim == 4 and as_linear.state[key].ndim == 2
    ref = hf_output(theirs, x)
    assert max_diff(load(as_conv), x, ref) <= TOL and max_diff(load(as_linear), x, ref) <= TOL
    with pytest.raises(CheckpointError, match="ConvNextForImageClassification.*vit_tiny_patch16_224"):
        hf.read(tmp_path, "vit_tiny_patch16_224")


def test_tensors_with_no_effect_on_classification_are_dropped(tmp_path, transformers):
    """mask_token (masked image modelling only) and relative_position_index (a buffer older transformers saved)."""
    config = transformers.BeitConfig(**SMALL, num_labels=3, use_relative_position_bias=True, use_mask_token=True)
    theirs = perturb(transformers.BeitForImageClassification(config), params={"*": add_noise(0.05)}).eval()
    theirs.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "model.safetensors")
    assert "beit.embeddings.mask_token" in state
    state["beit.encoder.layer.0.attention.attention.relative_position_bias.relative_position_index"] = \
        torch.zeros(17, 17, dtype=torch.long)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    c = hf.read(tmp_path)
    assert not any("mask_token" in k or "relative_position_index" in k for k in c.state)
    x = torch.randn(2, 3, 32, 32)
    assert max_diff(load(c), x, hf_output(theirs, x)) <= TOL


def test_pickled_and_sharded_weights_are_read(tmp_path, transformers):
    theirs, x = save_hf(transformers, "deit-teacher", tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    c = hf.read(tmp_path / "sharded")
    assert max_diff(load(c), x, hf_output(theirs, x)) <= TOL
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    # the tensors as saved (transformers 5 renames them in memory), in a pickle read with weights_only=True
    torch.save(_saved_tensors(tmp_path / "sharded"), pickled / "pytorch_model.bin")
    assert hf.detect(pickled)
    c2 = hf.read(pickled)
    assert all(torch.equal(c.state[k], c2.state[k]) for k in c.state) and c.state.keys() == c2.state.keys()


def _saved_tensors(folder):
    from safetensors.torch import load_file
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for shard in set(index["weight_map"].values()):
        state.update(load_file(folder / shard))
    return state


# ---- vitkit → transformers → vitkit ---------------------------------------------------------------------------
ROUND_TRIP = {  # registered name: overrides that shrink it
    "vit_tiny_patch16_224": dict(img_size=32, embed_dim=48, depth=2, num_heads=3, num_classes=7),
    "vit_small_patch16_224": dict(img_size=32, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                                  head_hidden_size=24),
    "deit_tiny_patch16_224": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=7),
    "deit_small_patch16_224": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=7, reg_tokens=1),
    "deit_tiny_distilled_patch16_224": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=7),
    "swin_tiny_patch4_window7_224": dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4),
                                         window_size=2, num_classes=7),
    "beit_base_patch16_224": dict(img_size=32, embed_dim=16, depth=2, num_heads=2, num_classes=7),
    "convnext_atto": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=7),
    "convnext_tiny": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=7),
}


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_vitkit_to_transformers_and_back_is_exact(name, tmp_path, transformers):
    ours = vitkit.create_model(name, **ROUND_TRIP[name])
    perturb(ours, params={"*": add_noise(0.05)}).eval()
    classes = [f"class {i}" for i in range(ours.num_classes)] or None
    hf.write(ours, name, tmp_path, classes=classes)
    config = json.loads((tmp_path / "config.json").read_text())
    theirs, info = getattr(transformers, config["architectures"][0]).from_pretrained(tmp_path,
                                                                                   output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mis-shaped tensors
    size = ROUND_TRIP[name].get("img_size", 64)
    x = torch.randn(2, ours.cfg.in_chans, size, size)
    assert max_diff(ours, x, hf_output(theirs.eval(), x)) <= TOL

    back = hf.read(tmp_path)
    assert back.model_name == name  # config.json's vitkit_model keeps plain DeiT apart from ViT
    assert vitkit.model_config(name, **back.overrides) == vitkit.model_config(name, **ROUND_TRIP[name])
    assert back.classes == classes
    mine = ours.state_dict()
    assert back.state.keys() == mine.keys()
    assert all(torch.equal(back.state[k], mine[k]) for k in mine)


def test_what_transformers_has_no_counterpart_for_is_refused_on_writing(tmp_path):
    avg = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=1, global_pool="avg")
    with pytest.raises(CheckpointError, match="mean pooling"):
        hf.write(avg, "vit_tiny_patch16_224", tmp_path)
    resnet = vitkit.create_model(vitkit.list_models("resnet*")[0], num_classes=3)
    with pytest.raises(CheckpointError, match="no Hugging Face transformers counterpart"):
        hf.write(resnet, "resnet", tmp_path)
    with pytest.raises(CheckpointError, match="2 class names given for a model with 1000 outputs"):
        hf.write(vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=1), "vit_tiny_patch16_224",
                 tmp_path, classes=["a", "b"])
    assert not (tmp_path / "config.json").exists()


# ---- bad input -----------------------------------------------------------------------------------------------------
def write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_safetensors(folder / "model.safetensors", {"x": torch.zeros(1)})
    return folder


def test_an_unsupported_model_type_is_named(tmp_path):
    folder = write_config(tmp_path, model_type="bert", architectures=["BertModel"])
    assert hf.detect(folder)  # it is a transformers folder; read() says why vitkit cannot use it
    with pytest.raises(CheckpointError, match="model_type 'bert'.*vit, deit, swin, beit, convnext"):
        hf.read(folder)


def test_a_folder_without_weights_gets_a_clear_error(tmp_path, transformers):
    save_hf(transformers, "vit", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert not hf.detect(tmp_path)
    with pytest.raises(CheckpointError, match="no weights: expected one of model.safetensors"):
        hf.read(tmp_path)
    no_config = write_config(tmp_path / "no-config", model_type="vit")
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        hf.read(no_config)


def test_timm_hub_folders_are_not_taken_for_transformers_ones(tmp_path):
    folder = write_config(tmp_path, architecture="vit_tiny_patch16_224", num_classes=10)  # timm's config.json
    assert not hf.detect(folder)
    assert not hf.detect(folder / "model.safetensors")


@pytest.mark.parametrize("act,option", [("gelu_python", {}), ("gelu_pytorch_tanh", {"act": "gelu_tanh"}),
                                        ("gelu_new", {"act": "gelu_tanh"})])
def test_exact_and_tanh_gelu_configs_load_with_transformers_outputs(act, option, tmp_path, transformers):
    """gelu_python is exact GELU written in Python; gelu_pytorch_tanh and gelu_new are the tanh approximation,
    which vitkit's ViT and DeiT compute with act='gelu_tanh'. A write() of the result records it again."""
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**dict(SMALL, hidden_act=act)))
    perturb(model, params={"*": add_noise(0.05)}).eval()
    model.save_pretrained(tmp_path / "in")
    x = torch.randn(2, 3, 32, 32)
    converted = hf.read(tmp_path / "in")
    assert {k: v for k, v in converted.overrides.items() if k == "act"} == option
    ours = load(converted)
    close = max_diff(ours, x, hf_output(model, x))
    assert close <= TOL
    if option:  # exact GELU on the same weights is measurably further off: the option is what makes the match
        exact = vitkit.create_model(converted.model_name, **{**converted.overrides, "act": "gelu"}).eval()
        exact.load_state_dict(converted.state)
        assert max_diff(exact, x, hf_output(model, x)) > 10 * close + 1e-6
    hf.write(ours, converted.model_name, tmp_path / "out")
    assert json.loads((tmp_path / "out/config.json").read_text())["hidden_act"] == (
        "gelu_pytorch_tanh" if option else "gelu")


def test_an_activation_vitkit_does_not_compute_is_refused(tmp_path, transformers):
    save_hf(transformers, "vit", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, hidden_act="relu")))
    with pytest.raises(CheckpointError, match="hidden_act='relu'.*exact or tanh-approximated GELU"):
        hf.read(tmp_path)
    save_hf(transformers, "convnext", tmp_path / "c")
    config = json.loads((tmp_path / "c/config.json").read_text())
    (tmp_path / "c/config.json").write_text(json.dumps(dict(config, hidden_act="gelu_new")))
    with pytest.raises(CheckpointError, match="hidden_act='gelu_new'.*exact GELU only"):
        hf.read(tmp_path / "c")


def test_a_layer_norm_eps_a_family_cannot_take_is_refused(tmp_path, transformers):
    """ViT and DeiT take any layer_norm_eps (norm_eps); BEiT, ConvNeXt and Swin have a fixed one, and a config with
    another (transformers' default 1e-12 for BEiT and ConvNeXt) would give other numbers: refused with the way out,
    never loaded silently."""
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**dict(SMALL, layer_norm_eps=1e-12)))
    model.save_pretrained(tmp_path / "vit")
    assert hf.read(tmp_path / "vit").overrides["norm_eps"] == 1e-12
    beit = transformers.BeitForImageClassification(transformers.BeitConfig(**dict(SMALL, layer_norm_eps=1e-12)))
    beit.save_pretrained(tmp_path / "beit")
    with pytest.raises(CheckpointError, match=r"layer_norm_eps=1e-12.*eps 1e-06.*\"layer_norm_eps\": 1e-06"):
        hf.read(tmp_path / "beit")
    swin = dict(model_type="swin", layer_norm_eps=1e-6)  # Swin's is 1e-5 in both libraries
    with pytest.raises(CheckpointError, match="layer_norm_eps=1e-06.*eps 1e-05"):
        hf.model_for_config(swin)


def test_tensors_that_do_not_fit_are_all_named_in_one_error(tmp_path, transformers):
    save_hf(transformers, "vit", tmp_path)
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "model.safetensors")
    del state["vit.layernorm.weight"]
    state["vit.encoder.layer.0.extra.weight"] = torch.zeros(1)
    state["classifier.weight"] = torch.zeros(9, 32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        hf.read(tmp_path)
    msg = str(err.value)
    assert "missing key(s): norm.weight" in msg
    assert "unexpected key(s): encoder.layer.0.extra.weight" in msg
    assert "head.weight (checkpoint (9, 32), model (5, 32))" in msg


def test_a_non_square_beit_with_relative_position_bias_is_refused_both_ways(tmp_path, transformers):
    """transformers indexes BEiT's relative-position table transposed on a non-square grid (vitkit equals timm
    and the original code), so such a folder would load with other logits: refused with the reason, as is writing
    one (square ones load: test_a_transformers_folder_reads_into_vitkit_with_the_same_outputs[beit])."""
    options = dict(SMALL, image_size=[32, 48], num_labels=3, use_relative_position_bias=True)
    transformers.BeitForImageClassification(transformers.BeitConfig(**options)).save_pretrained(tmp_path / "rel")
    with pytest.raises(CheckpointError, match=r"image_size \[32, 48\] is not square.*transposed"):
        hf.read(tmp_path / "rel")
    ours = vitkit.create_model("beit_base_patch16_224", img_size=(32, 48), patch_size=8, embed_dim=32, depth=2,
                               num_heads=2, num_classes=3)
    with pytest.raises(CheckpointError, match="non-square image size .* relative position bias"):
        hf.write(ours, "beit_base_patch16_224", tmp_path / "out")
