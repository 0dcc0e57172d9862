"""torchrun: two gloo processes train the same weights as one process, replicated (DDP) or sharded (FSDP2), and a
killed torchrun run resumes exactly."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from vitkit.train import TrainConfig, train
from vitkit.weights import load_checkpoint

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
# Dropout and drop path off (their masks differ between a batch and its halves); mixup, EMA and accumulation on.
ARGS = ["--data", "digits", "--model", "vit_pico_patch2_8", "--opt", "depth=2", "--opt", "embed_dim=32",
        "--opt", "num_heads=2", "--batch-size", "128", "--accum-steps", "2", "--mixup", "0.8", "--cutmix", "1.0",
        "--ema", "0.9", "--threads", "1", "--no-progress", "--lr", "3e-3"]

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this python")


def torchrun(tmp_path, *args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 500),
                             "-m", "vitkit", "train", "--runs-dir", str(tmp_path), *ARGS, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def one_process(tmp_path, name, epochs, resume=False, **kw):
    cfg = TrainConfig(runs_dir=str(tmp_path), name=name, epochs=epochs, data="digits", model="vit_pico_patch2_8",
                      model_overrides=dict(depth=2, embed_dim=32, num_heads=2), batch_size=128, accum_steps=2,
                      mixup=0.8, cutmix=1.0, ema=0.9, threads=1, progress=False, **{"lr": 3e-3, **kw})
    train(cfg, log=lambda *_: None, resume=resume)
    return load_checkpoint(tmp_path / name / "last.safetensors")


def assert_close(a, b, atol=1e-6):
    assert a.state.keys() == b.state.keys()
    worst = max((a.state[k] - b.state[k]).abs().max().item() for k in a.state if a.state[k].is_floating_point())
    print(f"max |Δweight| {worst:.2e}")
    assert worst <= atol, worst
    ema = [k for k in a.train_tensors if k.startswith("ema.")]
    assert ema and max((a.train_tensors[k] - b.train_tensors[k]).abs().max().item() for k in ema) <= atol


def test_two_gloo_processes_train_the_weights_of_one(tmp_path):
    proc = torchrun(tmp_path, "--name", "ddp", "--epochs", "2")  # 2 × 11 = 22 optimiser steps
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "2 processes" in out and out.count("epoch   2/2") == 1  # rank 0 alone speaks
    ddp = load_checkpoint(tmp_path / "ddp/last.safetensors")
    assert ddp.train["step"] == 22
    assert_close(ddp, one_process(tmp_path, "single", 2))
    assert len((tmp_path / "ddp/metrics.jsonl").read_text().splitlines()) == 2  # one writer


def test_fsdp_shards_train_the_weights_of_one_process_and_resume_anywhere(tmp_path):
    # SGD, not AdamW: FSDP2 reduces gradients in another rounding order (measured: 6.7e-8 apart after one
    # backward), and Adam's g / sqrt(v) turns that into 6e-6 for parameters whose gradients are near zero.
    sgd = ["--optimizer", "sgd", "--lr", "0.1"]
    proc = torchrun(tmp_path, "--name", "fsdp", "--epochs", "2", "--fsdp", *sgd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "2 processes (FSDP2)" in out and out.count("epoch   2/2") == 1
    single = one_process(tmp_path, "single", 2, optimizer="sgd", lr=0.1)
    assert_close(load_checkpoint(tmp_path / "fsdp/last.safetensors"), single)
    # The checkpoint holds full tensors in the one-process layout: a sharded run resumes on one process.
    proc = torchrun(tmp_path, "--name", "half", "--epochs", "1", "--fsdp", *sgd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_close(one_process(tmp_path, "half", 2, resume=True, optimizer="sgd", lr=0.1), single)


def test_fsdp_needs_more_than_one_process(tmp_path):
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        one_process(tmp_path, "alone", 1, fsdp=True)


@pytest.mark.slow
def test_a_killed_torchrun_run_resumes_to_the_same_weights(tmp_path):
    proc = torchrun(tmp_path, "--name", "ddp", "--epochs", "3")
    metrics = tmp_path / "ddp/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a kill somewhere in epoch 2, or while epoch 1 is being written
    proc.wait()
    resumed = torchrun(tmp_path, "--name", "ddp", "--epochs", "3", "--resume")
    out, _ = resumed.communicate(timeout=300)
    if "nothing to resume" in out:  # killed before epoch 1's last.safetensors landed: start it again
        resumed = torchrun(tmp_path, "--name", "ddp", "--epochs", "3", "--overwrite")
        out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert_close(load_checkpoint(tmp_path / "ddp/last.safetensors"), one_process(tmp_path, "single", 3))
