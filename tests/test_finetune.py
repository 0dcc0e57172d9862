"""Fine-tuning (--init from any dialect, layer decay, a frozen backbone), distillation, and the data and log
options of the trainer."""
import json

import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.data import export_images, load_embedded
from vitkit.train import TrainConfig, make_optimizer, resolve, train
from vitkit.train.classify import Classify
from vitkit.train.optim import set_lr
from vitkit.weights import CheckpointError, load_checkpoint, save_checkpoint
from vitkit.weights.pretrained import read_any

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path / "runs"), name="run", epochs=1,
                batch_size=128, progress=False, model_overrides=dict(TINY))
    return TrainConfig(**{**base, **kw})


def built(cfg, log=None):
    """The model the classify objective builds for `cfg` (with its --init), and the log lines."""
    lines = []
    init = read_any(cfg.init, cfg.model) if cfg.init else None
    cfg = resolve(cfg, embedded=cfg.data in ("digits", "mnist"), init_model=init.model_name if init else None)
    model = Classify(cfg, torch.device("cpu"), lines.append, init).build_model()
    return model, lines


def pico_checkpoint(path, classes, img_size=8, **data):
    torch.manual_seed(3)
    model = vitkit.create_model("vit_pico_patch2_8", **TINY, img_size=img_size, num_classes=len(classes))
    save_checkpoint(path, model=model, model_name="vit_pico_patch2_8",
                    overrides={**TINY, "img_size": img_size, "num_classes": len(classes)},
                    data={"classes": classes, "img_size": [img_size, img_size], "in_chans": 1, "mean": [0.5],
                          "std": [0.5], **data})
    return model


def test_layer_decay_changes_the_learning_rate_of_each_group():
    model = vitkit.create_model("vit_pico_patch2_8", **TINY)
    opt = make_optimizer(model, 1.0, 0.05, layer_decay=0.5)
    set_lr(opt, 1.0)
    lr_of = {n: g["lr"] for g in opt.param_groups for p in g["params"] for n, q in model.named_parameters() if p is q}
    assert lr_of["patch_embed.proj.weight"] == lr_of["cls_token"] == lr_of["pos_embed"] == 0.5 ** 3
    assert lr_of["blocks.0.attn.qkv.weight"] == 0.5 ** 2 and lr_of["blocks.1.mlp.fc2.bias"] == 0.5
    assert lr_of["norm.weight"] == lr_of["head.weight"] == 1.0
    set_lr(opt, 1e-3)  # the runtime's every-step update keeps the scales
    assert sorted({round(g["lr"] / 1e-3, 6) for g in opt.param_groups}) == [0.125, 0.25, 0.5, 1.0]


def test_the_runtime_applies_layer_decay_at_every_step(tmp_path):
    train(config(tmp_path, epochs=2, layer_decay=0.5), log=lambda *_: None)
    groups = load_checkpoint(tmp_path / "runs/run/last.safetensors").train["optim_groups"]
    top = max(g["lr"] for g in groups)
    assert {round(g["lr"] / top, 6) for g in groups} == {0.125, 0.25, 0.5, 1.0}


def test_init_from_a_vitkit_run_fits_the_size_and_replaces_a_head_for_other_classes(tmp_path):
    source = pico_checkpoint(tmp_path / "a.safetensors", [str(i) for i in range(10)], img_size=16)
    model, lines = built(config(tmp_path, init=str(tmp_path / "a.safetensors"), classes="5,6,7,8,9"))
    text = "\n".join(lines)
    assert "resized pos_embed: 64 patch positions → 4×4" in text
    assert "new head for 5 classes: head.weight, head.bias freshly initialised" in text
    assert model.head.weight.shape == (5, 32) and model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)


def test_a_head_is_new_when_the_class_names_differ_even_at_the_same_count(tmp_path):
    pico_checkpoint(tmp_path / "a.safetensors", [str(i) for i in range(5)])
    model, lines = built(config(tmp_path, init=str(tmp_path / "a.safetensors"), classes="5,6,7,8,9"))
    assert any("new head for other class names" in line for line in lines)
    same, lines = built(config(tmp_path, init=str(tmp_path / "a.safetensors"), classes="0,1,2,3,4"))
    assert any("nothing resized, the head kept" in line for line in lines)


def test_init_from_a_timm_state_dict_named_by_model(tmp_path, timm):
    ref = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=7)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    cfg = config(tmp_path, init=str(tmp_path / "timm.safetensors"), model="vit_tiny_patch16_224", img_size=32,
                 model_overrides={"depth": 2})
    model, lines = built(cfg)
    assert any("resized pos_embed: 16 patch positions → 2×2" in line for line in lines)
    assert model.head.weight.shape == (10, 192) and model.patch_embed.proj.weight.shape[1] == 3
    assert torch.equal(model.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    result = train(cfg, log=lambda *_: None)  # the digits grow three channels to fit the RGB checkpoint
    assert load_checkpoint(result.run_dir / "best.safetensors").data["in_chans"] == 3


def test_init_with_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    pico_checkpoint(tmp_path / "a.safetensors", [str(i) for i in range(10)])
    with pytest.raises(CheckpointError, match="does not fit"):
        train(config(tmp_path, init=str(tmp_path / "a.safetensors"), model="deit_tiny_patch16_224", img_size=32),
              log=lambda *_: None)


def test_a_frozen_backbone_trains_the_head_alone(tmp_path):
    source = pico_checkpoint(tmp_path / "a.safetensors", [str(i) for i in range(10)])
    result = train(config(tmp_path, init=str(tmp_path / "a.safetensors"), freeze="backbone", lr=1e-2),
                   log=lambda *_: None)
    after = load_checkpoint(result.run_dir / "last.safetensors").state
    for k, v in source.state_dict().items():
        assert torch.equal(after[k], v) != k.startswith("head."), k


def digits_teacher(path, **data):
    return pico_checkpoint(path, [str(i) for i in range(10)], **data)


def test_a_distilled_deit_trains_both_heads_and_logs_both_losses(tmp_path):
    digits_teacher(tmp_path / "t.safetensors")
    cfg = config(tmp_path, model="deit_tiny_distilled_patch16_224", img_size=8, teacher=str(tmp_path / "t.safetensors"),
                 distill="hard", model_overrides={"patch_size": 2, **TINY})
    start, _ = built(dataclasses_replace(cfg, teacher=None, objective="classify"))
    result = train(cfg, log=lambda *_: None)
    row = result.metrics[-1]
    assert {"label_loss", "distill_loss", "teacher_val_acc"} <= row.keys()
    after = load_checkpoint(result.run_dir / "last.safetensors").state
    for head in ("head.weight", "head_dist.weight"):
        assert not torch.equal(after[head], start.state_dict()[head]), head


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("data, message", [
    ({"classes": [str(i) for i in range(1, 11)]}, "trained on classes"),
    ({"img_size": [16, 16]}, "takes 16×16 images but the student trains at 8×8"),
])
def test_a_teacher_that_does_not_fit_the_student_is_refused(tmp_path, data, message):
    torch.manual_seed(3)
    size = data.get("img_size", [8, 8])[0]  # a consistent file: a teacher really built for that size
    model = vitkit.create_model("vit_pico_patch2_8", **TINY, img_size=size)
    record = {"classes": [str(i) for i in range(10)], "img_size": [8, 8], "in_chans": 1, "mean": [0.5],
              "std": [0.5], **data}
    save_checkpoint(tmp_path / "t.safetensors", model=model, model_name="vit_pico_patch2_8",
                    overrides={**TINY, "img_size": size}, data=record)
    with pytest.raises(ValueError, match=message):
        train(config(tmp_path, teacher=str(tmp_path / "t.safetensors")), log=lambda *_: None)


@pytest.fixture
def folders(tmp_path):
    digits = load_embedded("digits")
    export_images(digits, tmp_path / "both/train", indices=range(0, 300))
    export_images(digits, tmp_path / "both/val", indices=range(300, 400))
    return tmp_path / "both"


def test_a_folder_with_train_and_val_and_a_separate_val_folder(tmp_path, folders, capsys):
    common = dict(img_size=8, model_overrides={**TINY, "in_chans": 1}, batch_size=64)
    a = train(config(tmp_path, name="a", data=str(folders), **common), log=lambda *_: None)
    b = train(config(tmp_path, name="b", data=str(folders / "train"), val_data=str(folders / "val"), val_fraction=0,
                     **common), log=lambda *_: None)
    assert a.metrics[-1]["val_acc"] == b.metrics[-1]["val_acc"]
    rec = load_checkpoint(b.run_dir / "best.safetensors").data
    assert rec["val_data"] == str(folders / "val") and rec["val_fraction"] == 0.0 and rec["crop_pct"] == 0.875
    from vitkit.cli import main
    assert main(["eval", str(b.run_dir / "best.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 100 and out["top1"] == pytest.approx(b.metrics[-1]["val_acc"])


def test_config_files_yaml_and_a_runs_own_config_json(tmp_path):
    from vitkit.cli import build_parser
    from vitkit.cli.train import config_from_args
    (tmp_path / "c.yaml").write_text("epochs: 7\nbatch-size: 32\nmodel_overrides: {depth: 1}\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "9"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.batch_size, cfg.model_overrides) == (9, 32, {"depth": 1})  # the flag wins
    result = train(config(tmp_path, epochs=1), log=lambda *_: None)
    args = build_parser().parse_args(["train", "--config", str(result.run_dir / "config.json"), "--name", "again"])
    again = config_from_args(args)
    assert again.model_overrides == TINY and again.epochs == 1 and again.name == "again"
    (tmp_path / "bad.json").write_text('{"epoch": 3}')
    with pytest.raises(ValueError, match="unknown option"):
        config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "bad.json")]))


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    result = train(config(tmp_path, tensorboard=True), log=lambda *_: None)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _hf_folder(path, transformers):
    from test_hf import save_hf
    model, _ = save_hf(transformers, "vit", path)
    return dict(model.named_parameters())["vit.layers.0.attention.q_proj.weight"]


def _jax_npz(path, timm):
    import numpy as np
    from test_jax_weights import _timm_vit, to_jax
    model = _timm_vit(timm, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=7)
    np.savez(path, **to_jax(model))
    return model.blocks[0].attn.qkv.weight[:48]


def _torchvision_pth(path, timm):
    from test_torchvision_weights import _save, tv_vit
    model = tv_vit("vit_b_16", image_size=32, num_layers=2, num_classes=7)
    _save(model, path)
    return model.encoder.layers[0].self_attention.in_proj_weight[:768]


@pytest.mark.parametrize("dialect,make,file", [("hf", _hf_folder, "hf"), ("jax", _jax_npz, "vit.npz"),
                                               ("torchvision", _torchvision_pth, "vit_b_16.pth")])
def test_init_from_every_dialect_trains(tmp_path, dialect, make, file, request):
    """--init reads what load_pretrained reads: a Hugging Face folder, a JAX .npz, a torchvision .pth."""
    ref = make(tmp_path / file, request.getfixturevalue("transformers" if dialect == "hf" else "timm"))
    cfg = config(tmp_path, init=str(tmp_path / file), model=None, img_size=16, model_overrides={})
    model, lines = built(cfg)
    text = "\n".join(lines)
    assert f"({dialect}, " in text and "new head for 10 classes" in text, text
    assert torch.equal(model.blocks[0].attn.qkv.weight[:ref.shape[0]], ref)  # the file's weights, as they are
    result = train(cfg, log=lambda *_: None)
    assert load_checkpoint(result.run_dir / "best.safetensors").data["img_size"] == [16, 16]
