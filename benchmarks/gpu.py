"""GPU figures (issue 15, part 3): every figure in one JSON file, each beside its target.

    bash benchmarks/gpu.sh --out gpu.json                        # one CUDA GPU, a few minutes
    bash benchmarks/gpu.sh --parts vit_b16_infer,data_wait       # some parts only
    bash benchmarks/gpu.sh --dry-run --out dry.json              # CPU, tiny models, seconds: checks the plumbing

Parts (--parts, comma-separated; default: all, in this order):
    vit_b16_infer  ViT-B/16 bf16 inference, vitkit against timm, both torch.compile'd (vitkit.bench.compare:
                   same weights, fp32 logits checked within 1e-4 first, alternating rounds); images/s, the
                   ratio vitkit/timm, and MFU against a measured bf16 matmul peak (vitkit.bench.matmul_peak_flops)
    vit_b16_train  the ViT-B/16 training step (forward + cross-entropy + backward + AdamW, bf16 autocast), vitkit
                   against timm, eager unless --train-compile; images/s, ratio, MFU (3× the forward FLOPs)
    swin_t_infer   Swin-T bf16 inference against timm, both compiled; images/s, ratio, MFU (FLOPs counted by
                   vitkit.analysis.cost.measured_flops)
    data_wait      `vitkit train` (vitkit.train.train) on a folder of synthetic JPEGs written here: the share of
                   each epoch's training time spent waiting for the loader, data_s / train_s from metrics.jsonl
    torchrun       `torchrun --nproc_per_node 1 -m vitkit train ...` on the same folder, one epoch: its exit
                   status and epoch time

Each part fails softly: an exception is recorded as the part's 'error' (with its traceback) and the next part
runs. The JSON is rewritten after every part, so a run cut short keeps what it measured. Every part records the
device name, the torch version and its targets (issue 15): inference ≥ 1.1× timm compiled and ≥ 45% MFU,
training ≥ 35% MFU, data wait < 5% of the training time, and a torchrun run that succeeds.

--dry-run (the same as --device cpu --tiny) runs every part on the CPU with tiny models, 1–2 timed batches and a
few dozen small JPEGs, without torch.compile and with the CPU's own fp32 matmul throughput standing in for the
peak: it checks the argument handling, the part dispatch and the JSON, not speed. Its figures are not GPU figures.
(Where torchvision cannot be imported, gpu.sh puts tests/timm_shim on PYTHONPATH for timm, as the tests do.)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from vitkit.bench import (COMPILE_MODES, cpu_name, compare, import_timm, matmul_peak_flops, mfu,
                          model_flops_per_image)

PARTS = ("vit_b16_infer", "vit_b16_train", "swin_t_infer", "data_wait", "torchrun")
VIT_B16, SWIN_T = "vit_base_patch16_224", "swin_tiny_patch4_window7_224"

# Issue 15's targets: (figure, comparison, value, what the figure is). The check for each is in the part's record.
TARGETS = {
    "vit_b16_infer": [("ratio", ">=", 1.1, "vitkit / timm images/s, bf16, both torch.compile'd"),
                      ("mfu", ">=", 0.45, "model FLOP utilisation against the measured bf16 matmul peak")],
    "vit_b16_train": [("mfu", ">=", 0.35, "training-step MFU (3× forward FLOPs) against the bf16 matmul peak")],
    "swin_t_infer": [("ratio", ">=", 1.1, "vitkit / timm images/s, bf16, both torch.compile'd (issue 6 asked "
                                          "≥ 1.0×; issue 15's inference target is 1.1×)")],
    "data_wait": [("data_fraction", "<", 0.05, "data_s / train_s of the last epoch of `vitkit train` on JPEGs")],
    "torchrun": [("success", "==", True, "`torchrun --nproc_per_node 1 -m vitkit train` exits 0")],
}
OPS: dict[str, Callable] = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b}

# Tiny stand-ins for the CPU check: they build and run in milliseconds, and timm builds the same.
TINY = {VIT_B16: dict(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3),
        SWIN_T: dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)}


# ---------------------------------------------------------------------------------------------
# The run: its settings, shared state and the JSON record
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    args: argparse.Namespace
    device: torch.device
    device_name: str
    tmp: Path
    peak: dict = dataclasses.field(default_factory=dict)   # {'flops', 'how'} or {'error'}
    jpeg_seconds: float | None = None                      # how long writing the JPEG folder took
    _jpegs: Path | None = None

    @property
    def tiny(self) -> bool:
        return self.args.tiny

    def overrides(self, name: str) -> dict:
        return dict(TINY[name]) if self.tiny else {}

    def peak_flops(self) -> float | None:
        """The matmul peak that MFU divides by, measured once: bf16 on CUDA; the CPU's fp32 in a dry run."""
        if not self.peak:
            try:
                if self.device.type == "cuda":
                    self.peak = {"flops": matmul_peak_flops(self.device), "dtype": "bf16",
                                 "how": "best of 10 (8192×8192)@(8192×8192) bf16 products (vitkit.bench)"}
                else:
                    self.peak = {"flops": cpu_matmul_flops(), "dtype": "fp32",
                                 "how": "CPU fp32 (256×256) products: a stand-in so the dry run computes an MFU"}
            except Exception as e:  # MFU is then missing; the ratios still stand
                self.peak = {"error": f"{type(e).__name__}: {e}"}
        return self.peak.get("flops")

    def jpeg_folder(self) -> Path:
        """The synthetic JPEG folder, written on first use and shared by data_wait and torchrun."""
        if self._jpegs is None:
            a = self.args
            root = self.tmp / "jpegs"
            t0 = time.perf_counter()
            make_jpeg_folder(root, a.jpeg_count, a.jpeg_size, classes=a.jpeg_classes)
            self.jpeg_seconds = time.perf_counter() - t0
            self._jpegs = root
        return self._jpegs


def check(figures: dict, part: str) -> list[dict]:
    """Each target of `part` against the measured figure: met is None where the figure is missing."""
    out = []
    for figure, op, value, what in TARGETS[part]:
        got = figures.get(figure)
        out.append({"figure": figure, "op": op, "target": value, "measured": got, "what": what,
                    "met": None if got is None else bool(OPS[op](got, value))})
    return out


def summarise(part: dict) -> str:
    """'error', 'missed' (a target missed), 'incomplete' (a figure missing, e.g. MFU without a peak) or 'met'."""
    met = [c.get("met") for c in part["checks"]]
    if "error" in part:
        return "error"
    return "missed" if False in met else "incomplete" if None in met else "met"


def targets_of(part: str) -> list[dict]:
    return [{"figure": f, "op": op, "target": v, "what": w} for f, op, v, w in TARGETS[part]]


def clean(obj):
    """JSON-safe: non-finite floats become None, tuples lists, anything else unknown its str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write_json(path: Path, record: dict) -> None:
    """Write atomically (a temporary file, then a rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(record), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def cpu_matmul_flops(n: int = 256, iters: int = 5) -> float:
    """The CPU's fp32 matmul throughput (FLOP/s), best of `iters`: the dry run's stand-in for the GPU peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def forward_flops(name: str, overrides: dict) -> tuple[int, str]:
    """FLOPs of one image's forward pass: the analytic count (ViT family), else FlopCounterMode on one image."""
    flops = model_flops_per_image(name, **overrides)
    if flops:
        return flops, "vitkit.analysis.cost.count_flops (analytic, matmuls only)"
    from vitkit import create_model
    from vitkit.analysis.cost import measured_flops
    return measured_flops(create_model(name, **overrides)), "vitkit.analysis.cost.measured_flops (FlopCounterMode)"


def make_jpeg_folder(root: Path, count: int, size: tuple[int, int], classes: int = 10, seed: int = 0) -> None:
    """`count` synthetic JPEGs in ImageFolder layout, root/class_XX/NNNNN.jpg, round-robin over `classes`.

    Each is a smooth colour field with fine noise on top, at `size` (W, H), quality 90: about 60 kB at 500×375,
    2.3 ms to decode on one core here. ImageNet's JPEGs average about 110 kB, so these decode somewhat faster than
    photos and the data-wait figure errs a little on the optimistic side."""
    from PIL import Image
    w, h = size
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        rnd = random.Random(seed * 1_000_003 + i)
        cw, ch = max(1, w // 64), max(1, h // 64)
        fw, fh = max(1, w // 2), max(1, h // 2)
        coarse = Image.frombytes("RGB", (cw, ch), rnd.randbytes(cw * ch * 3)).resize((w, h), Image.BICUBIC)
        fine = Image.frombytes("RGB", (fw, fh), rnd.randbytes(fw * fh * 3)).resize((w, h), Image.BILINEAR)
        Image.blend(coarse, fine, 0.25).save(root / f"class_{i % classes:02d}" / f"{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:  # PIL releases the GIL
        list(pool.map(one, range(count)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command() -> list[str]:
    """torchrun beside this Python, else the module it runs (the same launcher)."""
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _vs_timm(name: str, mode: str, run: Run, *, batch: int, compile_mode: str, warmup: int, iters: int) -> dict:
    """vitkit against timm in bf16 for one mode, with MFU for both: the figures every model part records."""
    overrides = run.overrides(name)
    result = compare(name, mode=mode, batch=batch, device=str(run.device), dtype="bf16",
                     compile=False if compile_mode == "none" else compile_mode, warmup=warmup, iters=iters,
                     micro_batch=0, bf16_path=False, **overrides)
    c = result[mode]
    flops, flops_source = forward_flops(name, overrides)
    peak = run.peak_flops()
    figures = {"vitkit_images_per_s": c["vitkit"]["images_per_s"], "timm_images_per_s": c["timm"]["images_per_s"],
               "ratio": c["ratio"], "ratio_iqr": c["ratio_iqr"], "ratio_of_medians": c["ratio_of_medians"],
               "mfu": mfu(flops, c["vitkit"]["images_per_s"], peak, train=mode == "train"),
               "timm_mfu": mfu(flops, c["timm"]["images_per_s"], peak, train=mode == "train"),
               "forward_flops_per_image": flops, "flops_source": flops_source,
               "matmul_peak_flops": peak, "fp32_max_abs_logit_diff": result["max_abs_logit_diff"]}
    if mode == "infer":
        path = next(iter(c["paths"].values()))
        figures.update(bf16_max_abs_logit_diff_vs_timm=path["max_abs_logit_diff"],
                       bf16_top1_agreement_vs_timm=path["top1_agreement"])
    settings = {"model": name, "overrides": overrides, "batch": batch, "dtype": "bf16 autocast",
                "compile": compile_mode, "warmup": warmup, "rounds": iters}
    return {"settings": settings, "figures": figures, "compare": result}


# ---------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------

def part_vit_b16_infer(run: Run) -> dict:
    a = run.args
    return _vs_timm(VIT_B16, "infer", run, batch=a.batch, compile_mode=a.compile, warmup=a.warmup, iters=a.iters)


def part_vit_b16_train(run: Run) -> dict:
    a = run.args
    return _vs_timm(VIT_B16, "train", run, batch=a.train_batch, compile_mode=a.train_compile, warmup=a.warmup,
                    iters=a.train_iters)


def part_swin_t_infer(run: Run) -> dict:
    a = run.args
    return _vs_timm(SWIN_T, "infer", run, batch=a.batch, compile_mode=a.compile, warmup=a.warmup, iters=a.iters)


def part_data_wait(run: Run) -> dict:
    from vitkit.train import TrainConfig, train
    from vitkit.train.metrics import read_metrics
    a = run.args
    folder = run.jpeg_folder()
    overrides = run.overrides(VIT_B16) if a.train_model == VIT_B16 else {}
    cfg = TrainConfig(data=str(folder), model=a.train_model, model_overrides=overrides, epochs=a.data_epochs,
                      batch_size=a.data_batch, num_workers=a.num_workers, device=str(run.device), threads=a.threads,
                      val_fraction=0.1, runs_dir=str(run.tmp / "runs"), name="data-wait", progress=False)
    lines: list[str] = []
    result = train(cfg, log=lines.append, overwrite=True)
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    epochs = [{"epoch": r["epoch"], "train_s": r["train_s"], "data_s": r["data_s"], "epoch_s": r["epoch_s"],
               "data_fraction": r["data_s"] / r["train_s"] if r["train_s"] else None} for r in rows]
    last = epochs[-1]
    figures = {"data_fraction": last["data_fraction"], "data_s": last["data_s"], "train_s": last["train_s"],
               "epochs": epochs, "first_epoch_data_fraction": epochs[0]["data_fraction"]}
    settings = {"model": a.train_model, "overrides": cfg.model_overrides, "jpegs": a.jpeg_count,
                "jpeg_size": list(a.jpeg_size), "classes": a.jpeg_classes, "val_fraction": cfg.val_fraction,
                "batch": a.data_batch, "num_workers": a.num_workers, "epochs": a.data_epochs,
                "amp": "bf16 autocast on CUDA", "jpeg_write_s": run.jpeg_seconds,
                "note": "the headline is the last epoch; every epoch's DataLoader starts its workers afresh, and "
                        "the first epoch also pays CUDA's warm-up in train_s"}
    return {"settings": settings, "figures": figures, "log": lines[-5:]}


def part_torchrun(run: Run) -> dict:
    from vitkit.train.metrics import read_metrics
    a = run.args
    folder = run.jpeg_folder()
    runs = run.tmp / "torchrun-runs"
    cmd = [*torchrun_command(), "--nproc_per_node", "1", "--master_port", str(free_port()), "-m", "vitkit",
           "train", "--data", str(folder), "--model", a.train_model, "--epochs", "1", "--batch-size",
           str(a.data_batch), "--num-workers", str(a.num_workers), "--device", run.device.type, "--val-fraction",
           "0.1", "--runs-dir", str(runs), "--name", "torchrun", "--no-progress"]
    if a.train_model == VIT_B16:
        cmd += [f"--opt={k}={v!r}" for k, v in run.overrides(VIT_B16).items()]
    env = dict(os.environ)
    if a.threads:
        cmd += ["--threads", str(a.threads)]
        env["OMP_NUM_THREADS"] = str(a.threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=a.torchrun_timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own; on SIGTERM it ends them itself. SIGKILL after 30 s.
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        raise TimeoutError(f"torchrun ran past --torchrun-timeout {a.torchrun_timeout:g} s and was killed; "
                           f"its output ended: {output[-800:]}") from None
    wall = time.perf_counter() - t0
    rows = read_metrics(runs / "torchrun" / "metrics.jsonl")
    figures = {"success": proc.returncode == 0 and len(rows) == 1, "returncode": proc.returncode,
               "wall_s": wall, "epoch_s": rows[-1]["epoch_s"] if rows else None,
               "train_s": rows[-1]["train_s"] if rows else None, "data_s": rows[-1]["data_s"] if rows else None}
    record = {"settings": {"command": cmd, "model": a.train_model}, "figures": figures,
              "output_tail": output[-1500:]}
    if not figures["success"]:
        record["error"] = f"torchrun exited {proc.returncode} with {len(rows)} metrics row(s); see output_tail"
    return record


PART_FNS: dict[str, Callable[[Run], dict]] = {
    "vit_b16_infer": part_vit_b16_infer, "vit_b16_train": part_vit_b16_train, "swin_t_infer": part_swin_t_infer,
    "data_wait": part_data_wait, "torchrun": part_torchrun}


def run_part(name: str, run: Run) -> dict:
    """One part, failing softly: its figures and checks, or its error; always the device, torch and targets."""
    head = {"device": str(run.device), "device_name": run.device_name, "torch": torch.__version__,
            "dry_run": run.tiny and run.device.type == "cpu"}
    t0 = time.perf_counter()
    try:
        out = PART_FNS[name](run)
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        if (run.args.compile, run.args.train_compile) != ("none", "none"):
            torch._dynamo.reset()  # one part's compiled graphs do not count against the next one's recompile limit
    out.update(head, seconds=time.perf_counter() - t0)
    out["checks"] = check(out["figures"], name) if "figures" in out else targets_of(name)
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none given)'}; choose from "
                                         f"{', '.join(PARTS)}, comma-separated")
    return names


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 500x375, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu.json"), help="the JSON file to write (default: gpu.json)")
    ap.add_argument("--parts", type=_parts, default=list(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 1–2 batches, a few JPEGs: checks, not figures")
    ap.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny: seconds on the CPU")
    compile_modes = ["none", *COMPILE_MODES]
    ap.add_argument("--compile", choices=compile_modes, help="torch.compile mode for both libraries' inference "
                                                             "(default: 'default'; 'none' on the CPU)")
    ap.add_argument("--train-compile", choices=compile_modes, default="none",
                    help="torch.compile mode for the training step (default: none, the trainer's eager step)")
    ap.add_argument("--batch", type=int, help="inference batch (default: 256; 2 with --tiny)")
    ap.add_argument("--train-batch", type=int, help="training-step batch (default: 128; 2 with --tiny)")
    ap.add_argument("--warmup", type=int, help="untimed calls per model first (default: 5; 1 with --tiny)")
    ap.add_argument("--iters", type=int, help="alternating inference rounds (default: 30; 2 with --tiny)")
    ap.add_argument("--train-iters", type=int, help="alternating training rounds (default: 15; 2 with --tiny)")
    ap.add_argument("--train-model", default=VIT_B16, help=f"model for data_wait and torchrun (default: {VIT_B16}; "
                                                           "tiny with --tiny)")
    ap.add_argument("--jpeg-count", type=int, help="synthetic JPEGs to write (default: 4000; 24 with --tiny)")
    ap.add_argument("--jpeg-size", type=_size, help="their WIDTHxHEIGHT (default: 500x375; 48x36 with --tiny)")
    ap.add_argument("--jpeg-classes", type=int, help="class folders (default: 10; 2 with --tiny)")
    ap.add_argument("--data-batch", type=int, help="`vitkit train` batch (default: 128; 8 with --tiny)")
    ap.add_argument("--data-epochs", type=int, help="data_wait epochs; the last is the headline (default: 2; 1 "
                                                    "with --tiny)")
    ap.add_argument("--num-workers", type=int, help="DataLoader workers (default: min(8, CPUs - 1); 0 with --tiny)")
    ap.add_argument("--threads", type=int, help="torch CPU threads, here and in the trainer (default: torch's)")
    ap.add_argument("--torchrun-timeout", type=float, default=600.0, help="seconds (default: 600)")
    ap.add_argument("--tmp", type=Path, help="where to write the JPEGs and runs (default: a temporary folder, "
                                             "removed at the end)")
    args = ap.parse_args(argv)
    if args.dry_run:
        if args.device == "cuda":
            ap.error("--dry-run runs on the CPU; for a quick check on the GPU pass --tiny instead")
        args.device, args.tiny = "cpu", True
    args.device = args.device or "cuda"
    tiny, cpu = args.tiny, args.device == "cpu"
    defaults = dict(compile="none" if cpu else "default", batch=2 if tiny else 256, train_batch=2 if tiny else 128,
                    warmup=1 if tiny else 5, iters=2 if tiny else 30, train_iters=2 if tiny else 15,
                    jpeg_count=24 if tiny else 4000, jpeg_size=(48, 36) if tiny else (500, 375),
                    jpeg_classes=2 if tiny else 10, data_batch=8 if tiny else 128, data_epochs=1 if tiny else 2,
                    num_workers=0 if tiny else max(0, min(8, (os.cpu_count() or 1) - 1)))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("batch", "train_batch", "iters", "train_iters", "jpeg_count", "jpeg_classes", "data_batch",
              "data_epochs"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    if args.warmup < 0 or args.num_workers < 0:
        ap.error("--warmup and --num-workers must be ≥ 0")
    if args.jpeg_count < 2 * args.jpeg_classes:
        ap.error(f"--jpeg-count {args.jpeg_count} is too few for {args.jpeg_classes} classes and a validation "
                 f"split; give at least {2 * args.jpeg_classes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu.py: torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda}); run it "
              f"on a machine with one, with a CUDA build of torch, or pass --dry-run to check the script on the "
              f"CPU", file=sys.stderr)
        return 2
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        timm_version = import_timm().__version__
    except RuntimeError as e:
        timm_version = f"not importable: {e}"
    record = {
        "what": "GPU figures, issue 15 part 3 (benchmarks/gpu.py)",
        "dry_run": args.tiny and device.type == "cpu",
        "note": ("dry run on the CPU with tiny models: checks the script, these are not GPU figures"
                 if args.tiny and device.type == "cpu" else
                 "tiny models: a quick check of the CUDA paths, not the figures" if args.tiny else ""),
        "command": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                "timm": timm_version, "python": platform.python_version(), "cpus": os.cpu_count(),
                "threads": torch.get_num_threads()},
        "targets": {p: targets_of(p) for p in PARTS},
        "parts": {},
    }
    out = args.out
    tmp_ctx = tempfile.TemporaryDirectory(prefix="vitkit-gpu-") if args.tmp is None else None
    tmp = Path(tmp_ctx.name) if tmp_ctx else args.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    run = Run(args, device, name, tmp)
    record["matmul_peak"] = None
    try:
        for part in args.parts:
            print(f"[gpu.py] {part} ...", file=sys.stderr, flush=True)
            record["parts"][part] = r = run_part(part, run)
            record["matmul_peak"] = run.peak or None
            status = "error: " + r["error"].splitlines()[0] if "error" in r else ", ".join(
                f"{c['figure']} {c['measured']:.4g} ({'met' if c['met'] else 'missed'})" if isinstance(
                    c["measured"], float) else f"{c['figure']} {c['measured']}" for c in r["checks"])
            print(f"[gpu.py] {part}: {status}  ({r['seconds']:.1f} s)", file=sys.stderr, flush=True)
            write_json(out, record)
    finally:
        record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record["summary"] = {p: summarise(r) for p, r in record["parts"].items()}
        write_json(out, record)
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(f"[gpu.py] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
