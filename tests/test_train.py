"""The trainer: it learns, resumes exactly, keeps what it wrote, and reports what it measured."""
import json
import math
import os
import stat

import pytest
import torch

import vitkit
from vitkit.models import VisionTransformer
from vitkit.data import export_images, load_embedded
from vitkit.train import RunExistsError, TrainConfig, lr_factor, param_groups, train
from vitkit.train import loop as train_loop
from vitkit.train.metrics import confusion_matrix, read_metrics, topk_correct
from vitkit.weights import atomic_write, load_checkpoint, save_checkpoint

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def quiet(*_):
    pass


def small_config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path / "runs"), name="run", epochs=3,
                batch_size=128, progress=False, model_overrides=dict(TINY))
    return TrainConfig(**{**base, **kw})


def same_weights(a_path, b_path, prefix_tensors=True):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    if prefix_tensors:
        assert a.train_tensors.keys() == b.train_tensors.keys()
        for k in a.train_tensors:
            assert torch.equal(a.train_tensors[k], b.train_tensors[k]), k


def stop_after(epoch):
    def hook(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
    return hook


def test_overfits_one_small_batch(tmp_path):
    digits = load_embedded("digits")
    folder = tmp_path / "few"
    export_images(digits, folder, indices=list(range(40)))  # 40 images, 10 classes
    cfg = small_config(tmp_path, data=str(folder), img_size=8, val_fraction=0.25, epochs=100, batch_size=28, lr=3e-3,
                       warmup_epochs=1, min_lr_ratio=1.0, label_smoothing=0.0, train_crop="none", hflip=0.0,
                       weight_decay=0.0, crop_pct=1.0,
                       model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 4, "in_chans": 1})
    rows = train(cfg, log=quiet).metrics
    assert rows[0]["train_loss"] > 1.5  # starts near ln(10) = 2.30
    assert rows[-1]["train_loss"] < 0.05, rows[-1]  # 28 images memorised


def test_resume_is_exact(tmp_path):
    """Interrupted after epoch 2 and resumed, a run ends with the same weights as one that never stopped.
    Drop path is on: its masks are keyed by (seed, epoch, step), so nothing random needs saving."""
    train(small_config(tmp_path, name="straight", epochs=4, drop_path=0.2), log=quiet)
    interrupted = small_config(tmp_path, name="interrupted", epochs=4, drop_path=0.2)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, on_epoch_end=stop_after(2), log=quiet)
    assert load_checkpoint(tmp_path / "runs/interrupted/last.safetensors").train["epoch"] == 2
    train(interrupted, resume=True, log=quiet)
    same_weights(tmp_path / "runs/straight/last.safetensors", tmp_path / "runs/interrupted/last.safetensors")
    rows = read_metrics(tmp_path / "runs/interrupted/metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in read_metrics(tmp_path / "runs/straight/metrics.jsonl")]


@pytest.fixture
def teacher(tmp_path):
    """A small ViT teacher checkpoint for the digits (random weights: what it teaches does not matter here)."""
    torch.manual_seed(1)
    model = vitkit.create_model("vit_pico_patch2_8", **TINY)
    path = tmp_path / "teacher.safetensors"
    save_checkpoint(path, model=model, model_name="vit_pico_patch2_8", overrides=dict(TINY),
                    data={"classes": [str(i) for i in range(10)], "img_size": [8, 8], "in_chans": 1,
                          "mean": [0.5], "std": [0.5]})
    return path


def test_resume_is_exact_with_every_recipe_piece_on(tmp_path, teacher):
    """mixup, cutmix, RandAugment, erasing, flips, EMA, accumulation, drop path and distillation, all at once."""
    recipe = dict(epochs=3, mixup=0.8, cutmix=1.0, mix_switch=0.5, rand_magnitude=9.0, erase=0.5, hflip=0.5,
                  ema=0.9, accum_steps=2, drop_path=0.1, teacher=str(teacher), distill="soft", distill_tau=2.0)
    train(small_config(tmp_path, name="straight", **recipe), log=quiet)
    cfg = small_config(tmp_path, name="interrupted", **recipe)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=stop_after(1), log=quiet)
    train(cfg, resume=True, log=quiet)
    same_weights(tmp_path / "runs/straight/last.safetensors", tmp_path / "runs/interrupted/last.safetensors")
    same_weights(tmp_path / "runs/straight/ema.safetensors", tmp_path / "runs/interrupted/ema.safetensors", False)
    row = read_metrics(tmp_path / "runs/straight/metrics.jsonl")[-1]
    assert {"ema_val_acc", "distill_loss", "label_loss", "teacher_val_acc"} <= row.keys()
    ema = load_checkpoint(tmp_path / "runs/straight/ema.safetensors")
    raw = load_checkpoint(tmp_path / "runs/straight/last.safetensors")
    assert not torch.equal(ema.state["head.weight"], raw.state["head.weight"])  # the EMA is its own tensor


def test_a_kill_between_the_best_and_last_writes_leaves_best_right(tmp_path, monkeypatch):
    quick = dict(epochs=4, lr=3e-3, warmup_epochs=0.5)
    straight = train(small_config(tmp_path, name="straight", **quick), log=quiet)
    accs = [r["val_acc"] for r in straight.metrics]
    kill_at = next(e for e in range(2, 5) if accs[e - 1] > max(accs[:e - 1]))  # an epoch that writes a new best
    real_save = train_loop.save_checkpoint

    def killed_after_best(path, **kw):
        real_save(path, **kw)
        if path.name == "best.safetensors" and kw["data"]["epoch"] == kill_at:
            raise KeyboardInterrupt  # best of that epoch is on disk, last of that epoch is not

    monkeypatch.setattr(train_loop, "save_checkpoint", killed_after_best)
    cfg = small_config(tmp_path, name="killed", **quick)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=quiet)
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "runs/killed/last.safetensors").train["epoch"] == kill_at - 1
    resumed = train(cfg, resume=True, log=quiet)
    a, b = (load_checkpoint(tmp_path / f"runs/{n}/best.safetensors") for n in ("straight", "killed"))
    assert a.data["epoch"] == b.data["epoch"] and a.data["val_acc"] == b.data["val_acc"]
    assert resumed.best_score == straight.best_score == max(r["val_acc"] for r in straight.metrics)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k


class Diverges(VisionTransformer):
    """vit_pico_patch2_8 (so its checkpoints rebuild as that model) whose outputs turn NaN once `broken` is set:
    a run that diverges."""

    def __init__(self):
        super().__init__(vitkit.model_config("vit_pico_patch2_8", **TINY))
        self.broken = False

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.broken else out


def test_a_step_that_makes_the_weights_non_finite_is_never_saved(tmp_path):
    model = Diverges()

    def break_after_one(row):
        model.broken = True

    cfg = small_config(tmp_path, epochs=3)
    with pytest.raises(FloatingPointError, match="still holds epoch 1"):
        train(cfg, model=model, on_epoch_end=break_after_one, log=quiet)
    last = load_checkpoint(tmp_path / "runs/run/last.safetensors")
    assert last.train["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last.state.values() if t.is_floating_point())
    train(cfg, model=Diverges(), resume=True, log=quiet)  # the last good checkpoint resumes
    assert load_checkpoint(tmp_path / "runs/run/last.safetensors").train["epoch"] == 3


def test_a_torn_metrics_line_does_not_block_resume_and_a_bad_one_is_named(tmp_path):
    cfg = small_config(tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=stop_after(2), log=quiet)
    metrics = tmp_path / "runs/run/metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"epoch": 3, "train_lo')  # killed mid-write
    with pytest.warns(UserWarning, match="incomplete"):
        train(cfg, resume=True, log=quiet)
    assert [r["epoch"] for r in read_metrics(metrics)] == [1, 2, 3]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_metrics(metrics)


def test_a_killed_overwrite_is_not_resumed_as_the_old_run(tmp_path):
    cfg = small_config(tmp_path, epochs=2)
    train(cfg, log=quiet)
    with pytest.raises(KeyboardInterrupt):  # killed before its first epoch ended
        train(small_config(tmp_path, epochs=2, seed=5), overwrite=True,
              on_epoch_end=lambda row: (_ for _ in ()).throw(KeyboardInterrupt), log=quiet)
    last = load_checkpoint(tmp_path / "runs/run/last.safetensors")  # only the new run's epoch 1 can be here
    assert last.train["config"]["seed"] == 5
    (tmp_path / "runs/run/last.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(small_config(tmp_path, epochs=2), resume=True, log=quiet)


def test_resume_extends_a_finished_run_and_refuses_flags_that_change_it(tmp_path):
    train(small_config(tmp_path, epochs=2), log=quiet)
    with pytest.raises(ValueError, match=r"--lr 0.1 \(the run has 0.002\)"):
        train(small_config(tmp_path, epochs=3, lr=0.1), resume=True, log=quiet)
    result = train(small_config(tmp_path, epochs=3), resume=True, log=quiet)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]


def test_cli_resume_refuses_a_changed_flag(tmp_path, capsys):
    from vitkit.cli import main
    args = ["train", "--runs-dir", str(tmp_path), "--name", "r", "--epochs", "1", "--batch-size", "128",
            "--opt", "depth=1", "--opt", "embed_dim=16", "--opt", "num_heads=2", "--no-progress"]
    assert main(args) == 0
    assert main(["train", "--runs-dir", str(tmp_path), "--name", "r", "--resume", "--epochs", "2",
                 "--no-progress"]) == 0  # the saved options come back by themselves
    assert main(["train", "--runs-dir", str(tmp_path), "--name", "r", "--resume", "--weight-decay", "0.5"]) == 2
    assert "--weight-decay 0.5 (the run has 0.05)" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("clip_grad", -1.0, "--clip-grad is -1.0 but must be ≥ 0"),
    ("lr", -0.1, "--lr is -0.1 but must be ≥ 0"),
    ("lr", 0.0, "--lr is 0.0 but must be > 0"),
    ("weight_decay", -0.05, "--weight-decay is -0.05 but must be ≥ 0"),
    ("epochs", 0, "--epochs is 0 but must be a whole number ≥ 1"),
    ("epochs", -3, "--epochs is -3 but must be a whole number ≥ 1"),
    ("drop_path", 1.0, r"--drop-path is 1.0 but must be in \[0, 1\)"),
    ("drop_path", -0.1, r"--drop-path is -0.1 but must be in \[0, 1\)"),
    ("name", "../x", "outside --runs-dir"),
    ("name", "/etc", "outside --runs-dir"),
    ("layer_decay", 1.5, r"--layer-decay is 1.5 but must be in \(0, 1\]"),
    ("ema", 1.0, "--ema is 1.0 but must be a decay"),
    ("val_fraction", 0.0, "unless a validation folder is given"),
    ("optimizer", "adam", "--optimizer is 'adam' but must be one of 'adamw', 'sgd'"),
])
def test_invalid_values_are_refused_before_anything_starts(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train(small_config(tmp_path, **{field: value}), log=quiet)
    assert not (tmp_path / "runs").exists()


def test_orphan_temporaries_are_removed_and_files_follow_the_umask(tmp_path):
    run = tmp_path / "runs/run"
    run.mkdir(parents=True)
    (run / ".last.safetensors.abc123.tmp").write_bytes(b"half a file")
    old = os.umask(0o022)
    try:
        train(small_config(tmp_path, epochs=1), log=quiet)
    finally:
        os.umask(old)
    assert not list(run.glob(".*.tmp"))
    for name in ("last.safetensors", "best.safetensors", "metrics.png"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name


def test_run_writes_metrics_plot_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "PLOT_EVERY_S", 0.0)
    plotted = []
    result = train(small_config(tmp_path, epochs=2),
                   on_epoch_end=lambda row: plotted.append((tmp_path / "runs/run/metrics.png").exists()), log=quiet)
    assert plotted == [True, True]  # refreshed during the run, not only at the end
    run = tmp_path / "runs/run"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "val_loss", "val_acc", "val_top5", "lr"} <= r.keys()
        assert 0.0 <= r["val_acc"] <= r["val_top5"] <= 1.0
        assert 0.0 < r["data_s"] < r["train_s"] <= r["epoch_s"]  # loader waits are part of the training phase
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(run / "best.safetensors")
    assert best.data["val_acc"] == pytest.approx(max(r["val_acc"] for r in rows)) == pytest.approx(result.best_score)
    assert best.classes == [str(i) for i in range(10)] and best.data["crop_pct"] == 1.0
    model = best.build_model()  # rebuilt from name + overrides alone
    assert model.cfg.depth == 2 and model.cfg.in_chans == 1 and model.num_classes == 10
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


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
