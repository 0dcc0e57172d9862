"""Throughput and memory: inference and training-step speed of a model, alone or against timm's.

    bench_inference(model, batch=32, img_size=224)        # {'images_per_s', 'ms_per_batch', 'peak_mem_bytes', ...}
    bench_train_step(model, batch=32, img_size=224)       # forward + backward + AdamW step, same keys
    bench_inference(model, micro_batch=10)                # the same batch, fed 10 images at a time (vitkit.infer)
    bench_onnxruntime(model, batch=32, img_size=224)      # export_onnx → onnxruntime session.run
    compare("vit_small_patch16_224", mode="both")         # vitkit vs timm, same weights, alternating rounds
    run_bench("vit_small_patch16_224", ...)               # what `vitkit bench` prints

Timing: `warmup` untimed calls, then `iters` timed calls of one batch each, synchronised on CUDA; the
figure is the median, and the spread the interquartile range (25th–75th percentile).

Peak memory: on CUDA, torch.cuda.max_memory_allocated over the timed calls (after reset_peak_memory_stats), which
counts tensors only. On Linux CPUs, the process's peak resident set size (VmHWM, reset through
/proc/self/clear_refs at the start) minus its resident size at the start: what the calls added at their peak, to
within a page (memory malloc reuses from the process's free, resident heap is not growth, so a warm process can
read lower than a fresh one). Elsewhere, the growth of getrusage's ru_maxrss: a lower bound, 0 when an earlier
phase of the process had already peaked higher, since that peak cannot be reset. Each is reported with
'peak_mem_kind'.

`compare` builds timm's model of the same name, loads vitkit's state dict into it strictly (the keys are equal),
refuses to time the pair unless their fp32 eval logits agree within `atol` (1e-4), and then alternates vitkit and
timm round by round (flipping which goes first), so that drift in the machine's speed (thermal, other processes)
falls on both alike. The ratio is vitkit / timm in throughput: above 1 means vitkit is faster. On the CPU in fp32,
inference is also timed along other paths in the same rounds: the same batch fed to vitkit's model in micro-batches
(`vitkit.infer.predict_logits`, sized by `micro_batch_size`), and the plain call under bf16 autocast (on CPUs with
AMX or AVX-512 BF16 the matmuls then run in bf16). Each path gets its ratio against timm's plain fp32 call, and how
far its logits are from timm's (max |Δ| and top-1 agreement), since a bf16 path cannot stay within 1e-4. The best
path, and the best that keeps fp32, are named.
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .infer import micro_batch_size, predict_logits
from .registry import create_model, get_entry
from .train.dist import resolve_device
from .train.loop import optimizer_step
from .train.optim import make_optimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("infer", "train", "both")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    """Mixed precision for bf16/fp16 (weights stay fp32, matmuls run in the low type); nothing for fp32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th) percentiles, linearly interpolated; one value gives it three times."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _proc_status_bytes(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmHWM") <= _proc_status_bytes("VmRSS") + 2 ** 20
    except OSError:
        return False


class PeakMemory:
    """Peak memory across a block: CUDA max_memory_allocated; on a Linux CPU the peak RSS above the RSS at the
    start (VmHWM, reset first); elsewhere the growth of ru_maxrss (a lower bound). `bytes`, `kind` after it."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device, self.bytes = torch.device(device), 0
        self.kind = "cuda max_memory_allocated"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _reset_peak_rss():
            self.kind = "cpu peak RSS above the start (VmHWM)"
            self._start = _proc_status_bytes("VmRSS")
        else:
            self.kind = "cpu peak RSS growth (ru_maxrss; lower bound)"
            self._start = _peak_rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.kind.endswith("(VmHWM)"):
            self.bytes = max(0, _proc_status_bytes("VmHWM") - self._start)
        else:
            self.bytes = _peak_rss_bytes() - self._start
        return False


def time_calls(fn: Callable[[], object], *, warmup: int, iters: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn` for `iters` timed calls after `warmup` untimed ones."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def summarise(times: list[float], batch: int) -> dict:
    """Throughput figures from per-batch times: median images/s, ms per batch and the IQR of images/s."""
    q1, med, q3 = quartiles(times)
    return {"images_per_s": batch / med, "ms_per_batch": med * 1e3,
            "images_per_s_iqr": [batch / q3, batch / q1], "iters": len(times)}


def make_batch(model: nn.Module, batch: int, img_size: int | None, device: torch.device,
               in_chans: int | None = None) -> tuple[Tensor, Tensor]:
    """Random images (B, C, H, W) and labels (B,) for `model`; img_size defaults to the model's config."""
    cfg = getattr(model, "cfg", None)
    size = img_size or getattr(cfg, "img_size", None) or 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = in_chans or getattr(cfg, "in_chans", 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=gen).to(device)
    num_classes = getattr(cfg, "num_classes", 1000) or 1000
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    return x, y


def _infer_step(model: nn.Module, x: Tensor, device: torch.device, dtype: str,
                micro_batch: int | None = None) -> Callable[[], Tensor]:
    """One inference call on the batch x: model(x), or `micro_batch` images at a time when given."""
    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            return model(x) if micro_batch is None else predict_logits(model, x, micro_batch)
    return step


def resolve_micro_batch(model: nn.Module, micro_batch: int | str | None, x: Tensor) -> int | None:
    """The micro-batch path to time for batch x: 'auto' → `micro_batch_size` on the CPU (none on CUDA),
    an int → that many images, 0 or None → none. A size that does not split the batch gives none."""
    if micro_batch == "auto":
        micro_batch = micro_batch_size(model, tuple(x.shape[-2:]), x.shape[0], in_chans=x.shape[1],
                                       device=x.device)
    elif isinstance(micro_batch, str):
        raise ValueError(f"micro_batch must be 'auto' or a number of images, got {micro_batch!r}")
    if micro_batch is not None and micro_batch < 0:
        raise ValueError(f"micro_batch must be a positive number of images (0: none), got {micro_batch}")
    return micro_batch if micro_batch and micro_batch < x.shape[0] else None


def _train_step(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, dtype: str) -> Callable[[], None]:
    """The trainer's own step (vitkit.train.optimizer_step): forward + cross-entropy + backward + AdamW.
    fp16 runs without a loss scaler (speed only)."""
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.05)

    def loss_fn(m, batch, gen):
        return F.cross_entropy(m(batch[0]).float(), batch[1]), {}

    def step():
        optimizer_step(model, opt, loss_fn, [(x, y)], autocast=lambda: _autocast(device, dtype))
    return step


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def maybe_compile(model: nn.Module, compile: bool | str) -> nn.Module:
    """torch.compile(model) when `compile` is True or names a mode ('reduce-overhead': CUDA graphs on a GPU,
    which take the launch overhead out of small batches); the model itself when False."""
    if not compile:
        return model
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return torch.compile(model, mode=None if mode == "default" else mode)


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------

def _measure(step: Callable[[], object], batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    """Time `step` (one batch per call) and take the peak memory across the timed calls: `summarise`'s keys plus
    'peak_mem_bytes' and 'peak_mem_kind'."""
    with PeakMemory(device) as mem:
        times = time_calls(step, warmup=warmup, iters=iters, device=device)
    return {**summarise(times, batch), "peak_mem_bytes": mem.bytes, "peak_mem_kind": mem.kind}


def bench_inference(model: nn.Module, *, batch: int = 32, img_size: int | None = None, device: str | None = "cpu",
                    dtype: str = "fp32", warmup: int = 3, iters: int = 10, micro_batch: int | None = None) -> dict:
    """Inference throughput of `model` (eval mode, inference_mode, autocast for bf16/fp16) on batches of `batch`,
    fed `micro_batch` images at a time when given.

    Returns {'images_per_s', 'ms_per_batch', 'images_per_s_iqr', 'iters', 'peak_mem_bytes', 'peak_mem_kind'}.
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    x, _ = make_batch(model, batch, img_size, dev)
    return _measure(_infer_step(model, x, dev, dtype, micro_batch), batch, dev, warmup, iters)


def bench_train_step(model: nn.Module, *, batch: int = 32, img_size: int | None = None, device: str | None = "cpu",
                     dtype: str = "fp32", warmup: int = 2, iters: int = 5) -> dict:
    """Training-step throughput: forward + backward + AdamW step (train mode). The model's weights change.

    Returns the keys of `bench_inference`.
    """
    dev = resolve_device(device)
    model = model.to(dev).train()
    x, y = make_batch(model, batch, img_size, dev)
    return _measure(_train_step(model, x, y, dev, dtype), batch, dev, warmup, iters)


def bench_onnxruntime(model: nn.Module, *, batch: int = 32, img_size: int | None = None, warmup: int = 3,
                      iters: int = 10) -> dict:
    """Inference throughput of the model exported with `export_onnx` and run by onnxruntime's session.run
    (CPU execution provider, fp32). Returns the keys of `bench_inference` (memory: CPU peak RSS growth)."""
    from .export import OnnxClassifier, export_onnx
    model = model.cpu().eval()
    x, _ = make_batch(model, batch, img_size, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", img_size=tuple(x.shape[-2:]), in_chans=x.shape[1])
        runner = OnnxClassifier(path)
        feed = {runner.input_name: x.numpy()}
        return _measure(lambda: runner.session.run(None, feed), batch, torch.device("cpu"), warmup, iters)


# ---------------------------------------------------------------------------------------------
# Hardware peak and model FLOP utilisation (CUDA only)
# ---------------------------------------------------------------------------------------------

def matmul_peak_flops(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                      n: int = 8192, iters: int = 10) -> float:
    """Measured matmul throughput (FLOP/s): the best of `iters` (n×n)@(n×n) products in `dtype`.
    A practical peak to divide by, not the data sheet's."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise RuntimeError("the matmul peak is measured on CUDA only; MFU is not reported on the CPU")
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(dev)
    best = math.inf
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(dev)
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n ** 3 / best


def model_flops_per_image(name: str, img_size: int | None = None, **overrides) -> int | None:
    """Forward FLOPs per image from vitkit.analysis.cost (ViT family); None for models it does not cover."""
    from .analysis.cost import build_meta, count_flops
    if img_size is not None:
        overrides["img_size"] = img_size
    try:
        return count_flops(build_meta(name, **overrides))["total"]
    except TypeError:
        return None


def mfu(flops_per_image: int | None, images_per_s: float, peak_flops: float | None,
        train: bool = False) -> float | None:
    """Model FLOP utilisation: flops/image × images/s ÷ peak. A training step counts 3× the forward FLOPs."""
    if not flops_per_image or not peak_flops:
        return None
    return flops_per_image * (3 if train else 1) * images_per_s / peak_flops


# ---------------------------------------------------------------------------------------------
# vitkit against timm
# ---------------------------------------------------------------------------------------------

def import_timm():
    try:
        import timm
    except ImportError as e:
        raise RuntimeError(f"--compare timm needs timm, which cannot be imported ({e}); install it with "
                           f"`pip install timm` (and torchvision, or put tests/timm_shim on PYTHONPATH "
                           f"where torchvision has no working build)") from e
    return timm


def build_pair(name: str, *, atol: float = 1e-4, **overrides) -> tuple[nn.Module, nn.Module, float]:
    """vitkit's model and timm's model of the same name with the same weights, on the CPU in fp32.

    vitkit's (randomly initialised) state dict is loaded into timm's model strictly. Returns (vitkit, timm,
    max |Δlogit|) on one random batch in eval mode; raises RuntimeError if that exceeds `atol`.
    """
    timm = import_timm()
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} to compare with; pick a name both libraries register")
    ours = create_model(name, **overrides).eval()
    theirs = timm.create_model(name, pretrained=False, **overrides).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, _ = make_batch(ours, 2, overrides.get("img_size"), torch.device("cpu"))
    with torch.no_grad():
        diff = float((ours(x) - theirs(x)).abs().max())
    if not diff <= atol:  # `not <=` also catches NaN
        raise RuntimeError(f"{name}: vitkit's and timm's logits differ by {diff:.2e} with the same weights "
                           f"(allowed {atol:.0e}); they compute different things, so timing them is meaningless")
    return ours, theirs, diff


def _alternate(steps: dict[str, Callable[[], object]], *, warmup: int, iters: int, device: torch.device) -> dict:
    """Warm each step up, then time each once per round for `iters` rounds: {key: [seconds per round]}.
    The order flips every round (A B, B A, A B, …), so neither side always runs second, on warm caches."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times = {k: [] for k in steps}
    for i in range(iters):
        order = list(steps.items())
        for k, step in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def _ratio_summary(ours: list[float], theirs: list[float], batch: int) -> dict:
    ratios = [t / o for o, t in zip(ours, theirs)]  # per round: vitkit throughput / timm throughput
    q1, med, q3 = quartiles(ratios)
    return {"vitkit": summarise(ours, batch), "timm": summarise(theirs, batch),
            "ratio": med, "ratio_iqr": [q1, q3], "ratios": ratios,
            "ratio_of_medians": statistics.median(theirs) / statistics.median(ours)}


def compare(name: str, *, mode: str = "both", batch: int = 32, img_size: int | None = None,
            device: str | None = "cpu", dtype: str = "fp32", compile: bool | str = False, warmup: int = 2,
            iters: int = 10, atol: float = 1e-4, micro_batch: int | str | None = "auto", bf16_path: bool = True,
            int8_path: bool = True, **overrides) -> dict:
    """vitkit against timm, same weights, same process, alternating rounds.

    Returns {'model', 'max_abs_logit_diff', 'logits_checked_atol', 'infer': {...}, 'train': {...}} where each
    mode holds 'vitkit' and 'timm' (keys of `summarise`), 'ratios' (vitkit/timm throughput in each round), 'ratio'
    and 'ratio_iqr' (their median and interquartile range: the headline figure, since a round's two timings are
    adjacent and drift cancels) and 'ratio_of_medians' (the two medians divided; more sensitive to drift).
    'infer' also holds 'paths': the same figures for each way vitkit ran, each against timm's model(x), with the
    path's 'dtype' and its logits' 'max_abs_logit_diff' and 'top1_agreement' against timm's: 'eager' or 'compiled'
    (model(x)); 'micro-batch N' (the batch N images at a time; on the CPU unless micro_batch resolves to none, see
    `resolve_micro_batch`; never with compile); 'bf16 autocast' (CPU, fp32 runs, not compiled, with bf16_path);
    'int8 dynamic' (the same, with int8_path: vitkit.quantize.quantize_int8, whose top1_agreement with timm's fp32
    logits is the figure to read beside it).
    Then 'best_path' / 'best_ratio' over all paths and 'best_fp32_path' / 'best_fp32_ratio' over the fp32 ones.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    dev = resolve_device(device)
    if img_size is not None:
        overrides["img_size"] = img_size
    ours, theirs, diff = build_pair(name, atol=atol, **overrides)
    result = {"model": name, "max_abs_logit_diff": diff, "logits_checked_atol": atol}
    models = {"vitkit": ours.to(dev), "timm": theirs.to(dev)}
    x, y = make_batch(ours, batch, img_size, dev)
    if mode in ("infer", "both"):
        run = {k: maybe_compile(m.eval(), compile) for k, m in models.items()}
        steps = {k: _infer_step(m, x, dev, dtype) for k, m in run.items()}
        paths = {"compiled" if compile else "eager": ("vitkit", dtype)}  # label → (step, dtype)
        n = None if compile else resolve_micro_batch(ours, micro_batch, x)
        if n:
            paths[f"micro-batch {n}"] = ("vitkit micro", dtype)
            steps["vitkit micro"] = _infer_step(ours, x, dev, dtype, n)
        if bf16_path and dev.type == "cpu" and dtype == "fp32" and not compile:
            paths["bf16 autocast"] = ("vitkit bf16", "bf16")
            steps["vitkit bf16"] = _infer_step(ours, x, dev, "bf16")
        if int8_path and dev.type == "cpu" and dtype == "fp32" and not compile:
            from .quantize import quantize_int8
            paths["int8 dynamic"] = ("vitkit int8", "int8")
            steps["vitkit int8"] = _infer_step(quantize_int8(ours), x, dev, "fp32")
        t = _alternate(steps, warmup=warmup, iters=iters, device=dev)
        result["infer"] = _ratio_summary(t["vitkit"], t["timm"], batch)
        reference = steps["timm"]().float()
        found = result["infer"]["paths"] = {}
        for label, (k, path_dtype) in paths.items():
            out = steps[k]().float()
            found[label] = {**_ratio_summary(t[k], t["timm"], batch), "dtype": path_dtype,
                            "max_abs_logit_diff": float((out - reference).abs().max()),
                            "top1_agreement": float((out.argmax(-1) == reference.argmax(-1)).float().mean())}
        best = max(found, key=lambda p: found[p]["ratio"])
        best_fp32 = max((p for p in found if found[p]["dtype"] == "fp32"), key=lambda p: found[p]["ratio"],
                        default=None)
        result["infer"].update(best_path=best, best_ratio=found[best]["ratio"], best_fp32_path=best_fp32,
                               best_fp32_ratio=found[best_fp32]["ratio"] if best_fp32 else None)
    if mode in ("train", "both"):
        run = {k: maybe_compile(m.train(), compile) for k, m in models.items()}
        t = _alternate({k: _train_step(m, x, y, dev, dtype) for k, m in run.items()}, warmup=warmup, iters=iters,
                       device=dev)
        result["train"] = _ratio_summary(t["vitkit"], t["timm"], batch)
    return result


# ---------------------------------------------------------------------------------------------
# Everything `vitkit bench` reports
# ---------------------------------------------------------------------------------------------

def run_bench(name: str, *, batch: int = 32, img_size: int | None = None, dtype: str = "fp32",
              compile: bool | str = False, device: str | None = "cpu", runtime: str = "torch", mode: str = "both",
              compare_with: str | None = None, warmup: int = 2, iters: int = 10,
              micro_batch: int | str | None = "auto", bf16_path: bool = True, int8_path: bool = True,
              **overrides) -> dict:
    """One machine-readable record of a model's speed: environment, per-mode figures, MFU on CUDA, and the
    comparison with timm when `compare_with='timm'`. Inference with PyTorch on the CPU is also timed in
    micro-batches ('infer_micro', or the 'micro-batch N' path of the comparison) unless micro_batch is 0."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if runtime not in ("torch", "onnxruntime"):
        raise ValueError(f"runtime must be torch or onnxruntime, got {runtime!r}")
    if compare_with not in (None, "timm"):
        raise ValueError(f"--compare supports timm only, got {compare_with!r}")
    dev = resolve_device(device)
    get_entry(name)  # an unknown name fails here, with suggestions
    if runtime == "onnxruntime":
        if dev.type != "cpu" or dtype != "fp32" or compile or compare_with:
            raise ValueError("--runtime onnxruntime times fp32 inference on the CPU only; drop --device cuda, "
                             "--dtype, --compile and --compare")
        if mode != "infer":
            mode = "infer"  # onnxruntime has no training step
    if img_size is not None:
        overrides["img_size"] = img_size
    record = {"model": name, "batch": batch, "img_size": img_size, "dtype": dtype, "compile": compile,
              "device": str(dev), "runtime": runtime, "mode": mode, "warmup": warmup, "iters": iters,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()}
    flops = model_flops_per_image(name, **overrides)
    record["flops_per_image"] = flops
    peak = matmul_peak_flops(dev) if dev.type == "cuda" else None
    record["matmul_peak_flops_bf16"] = peak
    if compare_with == "timm":
        cmp = compare(name, mode=mode, batch=batch, device=str(dev), dtype=dtype, compile=compile,
                      warmup=warmup, iters=iters, micro_batch=micro_batch, bf16_path=bf16_path, int8_path=int8_path,
                      **overrides)
        record["compare"] = cmp
        for m in ("infer", "train"):
            if m in cmp:
                record[m] = cmp[m]["vitkit"]
    else:
        model = create_model(name, **overrides)
        if runtime == "onnxruntime":
            record["infer"] = bench_onnxruntime(model, batch=batch, warmup=warmup, iters=iters)
        else:
            model = model.to(dev)
            run = maybe_compile(model, compile)
            if mode in ("infer", "both"):
                record["infer"] = bench_inference(run, batch=batch, device=str(dev), dtype=dtype, warmup=warmup,
                                                  iters=iters, img_size=img_size)
                x, _ = make_batch(model, batch, img_size, dev)
                n = None if compile else resolve_micro_batch(model, micro_batch, x)
                if n:
                    record["infer_micro"] = {**bench_inference(model, batch=batch, device=str(dev), dtype=dtype,
                                                               warmup=warmup, iters=iters, img_size=img_size,
                                                               micro_batch=n), "micro_batch": n}
            if mode in ("train", "both"):
                record["train"] = bench_train_step(run, batch=batch, device=str(dev), dtype=dtype, warmup=warmup,
                                                   iters=iters, img_size=img_size)
    for m in ("infer", "infer_micro", "train"):
        if m in record:
            record[m]["mfu"] = mfu(flops, record[m]["images_per_s"], peak, train=m == "train")
    return record


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (what every figure names), or the platform's processor field."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


__all__ = ["COMPILE_MODES", "DTYPES", "MODES", "PeakMemory", "bench_inference", "bench_onnxruntime",
           "bench_train_step", "build_pair", "compare", "cpu_name", "import_timm", "matmul_peak_flops", "mfu",
           "model_flops_per_image", "quartiles", "resolve_micro_batch", "run_bench", "time_calls"]
