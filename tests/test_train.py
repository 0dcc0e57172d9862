"""The trainer: it learns, resumes exactly, keeps what it wrote, and reports what it measured."""
import json
import math

import pytest
import torch

import vitkit
from vitkit.data import export_images, load_embedded
from vitkit.train import RunExistsError, TrainConfig, lr_factor, param_groups, train
from vitkit.train.metrics import confusion_matrix, topk_correct
from vitkit.weights import atomic_write, load_checkpoint

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def quiet(*_):
    pass


def small_config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path / "runs"), name="run", epochs=3,
                batch_size=128, progress=False, model_overrides=dict(TINY))
    return TrainConfig(**{**base, **kw})


def test_overfits_one_small_batch(tmp_path):
    digits = load_embedded("digits")
    folder = tmp_path / "few"
    export_images(digits, folder, indices=list(range(40)))  # 40 images, 10 classes
    cfg = small_config(tmp_path, data=str(folder), img_size=8, val_fraction=0.25, epochs=100, batch_size=64, lr=3e-3,
                       warmup_epochs=1, min_lr_ratio=1.0, label_smoothing=0.0, crop_padding=0, weight_decay=0.0,
                       model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 4, "in_chans": 1})
    rows = train(cfg, log=quiet).metrics
    assert rows[0]["train_loss"] > 1.5  # starts near ln(10) = 2.30
    assert rows[-1]["train_loss"] < 0.05, rows[-1]  # 30 images memorised


def test_resume_is_exact(tmp_path):
    """Interrupted after epoch 2 and resumed, a run ends with the same weights as one that never stopped.
    Drop path is on, so the global RNG state must be restored too, not just re-seeded."""
    straight = small_config(tmp_path, name="straight", epochs=4, drop_path=0.2)
    train(straight, log=quiet)

    interrupted = small_config(tmp_path, name="interrupted", epochs=4, drop_path=0.2)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, on_epoch_end=stop_after_two, log=quiet)
    assert load_checkpoint(tmp_path / "runs/interrupted/last.safetensors").train["epoch"] == 2
    train(interrupted, resume=True, log=quiet)

    a = load_checkpoint(tmp_path / "runs/straight/last.safetensors")
    b = load_checkpoint(tmp_path / "runs/interrupted/last.safetensors")
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for k in a.train_tensors:
        assert torch.equal(a.train_tensors[k], b.train_tensors[k]), k
    rows = [json.loads(x) for x in (tmp_path / "runs/interrupted/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    straight_rows = [json.loads(x) for x in (tmp_path / "runs/straight/metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in straight_rows]


def test_run_writes_metrics_plot_and_checkpoints(tmp_path):
    result = train(small_config(tmp_path, epochs=2), log=quiet)
    run = tmp_path / "runs/run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "val_loss", "val_acc", "val_top5"} <= r.keys()
        assert 0.0 <= r["val_acc"] <= r["val_top5"] <= 1.0
        assert 0.0 < r["data_s"] < r["train_s"] <= r["epoch_s"]  # loader waits are part of the training phase
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(run / "best.safetensors")
    assert best.data["val_acc"] == pytest.approx(max(r["val_acc"] for r in rows)) == pytest.approx(result.best_val_acc)
    assert best.classes == [str(i) for i in range(10)]
    model = best.build_model()  # rebuilt from name + overrides alone
    assert model.cfg.depth == 2 and model.cfg.in_chans == 1 and model.num_classes == 10


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = small_config(tmp_path, epochs=1)
    train(cfg, log=quiet)
    before = (tmp_path / "runs/run/last.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg, log=quiet)
    assert (tmp_path / "runs/run/last.safetensors").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(small_config(tmp_path, name="never-ran"), resume=True, log=quiet)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(b"the good checkpoint")

    def crash_half_way(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash_half_way)
    assert target.read_bytes() == b"the good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind


def test_no_weight_decay_on_norms_biases_positions_and_tokens():
    model = vitkit.create_model("vit_pico_patch2_8", depth=1)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert {"blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"} <= decay_names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay_names) + len(no_decay_names) == len(names)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, min_ratio=0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    mid = warm + (total - warm) // 2
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # never rises after warm-up
    assert lr_factor(total, total, warm, 0.1) == pytest.approx(0.1)


def test_topk_and_confusion_matrix():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, ks=(1, 2)) == {1: 1, 2: 2}
    conf = confusion_matrix(logits.argmax(1), labels, 3)
    assert conf.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
