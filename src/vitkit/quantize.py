"""int8 inference on the CPU: the Linear layers' weights in int8, their inputs quantised batch by batch.

    quantize_int8(model)                      → a copy whose nn.Linear layers run int8 matmuls (PyTorch, fbgemm/x86)
    quantize_onnx_int8("f.onnx", "q.onnx")    → the same for an exported file, by onnxruntime's quantiser

Dynamic quantisation: each Linear weight is stored as int8 with one scale per output channel; at run time each
input batch gets its own scale and zero point, the matmul runs in int8 with int32 accumulation, and the result is
dequantised to fp32. Everything else (the patch-embedding convolution, LayerNorm, softmax, the attention's own
matmuls q·kᵀ and a·v, GELU) stays fp32. In a ViT the Linear layers (qkv, proj, fc1, fc2, head) carry about 90% of
the FLOPs at 224 pixels, so that is where the time goes and where int8 saves it. Nothing is calibrated, so any
checkpoint quantises as it is; `vitkit eval CKPT --int8` measures what it costs in accuracy.
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import VitkitError


class QuantizationError(VitkitError):
    """A model or file that cannot be quantised to int8."""


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every nn.Linear dynamically quantised (int8 weights, per output channel).

    CPU only: the quantised kernels have no CUDA form. The original model is left as it was."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise QuantizationError("int8 inference runs on the CPU only; move the model there first (model.cpu())")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "onednn") if e in engines), None)
    if engine is None:
        raise QuantizationError(f"this PyTorch build has no x86 int8 kernels (engines: {', '.join(engines)}); "
                                f"run in fp32 instead")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():  # torch.ao.quantization and its qint8 tensors announce their move to torchao
        for kind in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", kind)
        quantized = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8)
    quantized.int8 = True
    return quantized


def quantize_onnx_int8(src: str | Path, dst: str | Path) -> Path:
    """Quantise an exported fp32 ONNX file's MatMul/Gemm weights to int8 (per channel) with onnxruntime, keeping
    its vitkit metadata; written atomically. Returns dst."""
    from .export import _require
    from .weights import atomic_write
    _require("onnx", "onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}

    def write(tmp: Path) -> None:
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its advice to run shape inference first goes to the root
        try:
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.level = level
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            if key not in {p.key for p in proto.metadata_props}:
                proto.metadata_props.add(key=key, value=value)
        onnx.save_model(proto, str(tmp))

    atomic_write(dst, write)
    return dst


@torch.no_grad()
def verify_int8_onnx(model: nn.Module, path: str | Path, images: int = 16, least_agreement: float = 0.75) -> dict:
    """An int8 file against its fp32 PyTorch model on random inputs. int8 cannot match to 1e-4, so this checks that
    it computes the same function: the top-1 agreement must reach `least_agreement` (random inputs sit near
    decision boundaries far more often than real images, so real agreement is higher: `vitkit eval` measures it)
    and the logits must not wander further than their own spread. Raises QuantizationError otherwise."""
    from .export import OnnxClassifier
    onnx_model = OnnxClassifier(path)
    (h, w), c = onnx_model.metadata["img_size"], onnx_model.metadata["in_chans"]
    x = torch.randn(images, c, h, w, generator=torch.Generator().manual_seed(0))
    model = model.eval()
    want, got = model(x.to(next(model.parameters()).device)).float().cpu(), onnx_model(x)
    result = {"images": images, "top1_agreement": float((want.argmax(-1) == got.argmax(-1)).float().mean()),
              "max_abs_logit_diff": float((want - got).abs().max()), "logit_span": float(want.max() - want.min())}
    if not (result["top1_agreement"] >= least_agreement and result["max_abs_logit_diff"] <= result["logit_span"]):
        raise QuantizationError(f"{path}: the int8 file strays from the fp32 model (same top-1 on "
                                f"{100 * result['top1_agreement']:.0f}% of random images, max |Δlogit| "
                                f"{result['max_abs_logit_diff']:.2f}); do not use it, export in fp32 instead")
    return result


@torch.no_grad()
def compare_predictions(reference: nn.Module, candidate: nn.Module, loader) -> dict:
    """Both models over a loader of (images, labels): how far the candidate (an int8 model) strays from the
    reference (its fp32 original). Returns images; top1 of each (0–1) and the drop in points (reference −
    candidate, × 100); top1_agreement (share of images where the two predict the same class); the largest and the
    mean absolute difference between their softmax probabilities (max_prob_drift, mean_prob_drift) over every
    image and class."""
    n = same = right_ref = right_cand = 0
    max_drift, drift_sum = 0.0, 0.0
    for images, labels in loader:
        p_ref = reference(images).float().softmax(-1)
        p_cand = candidate(images).float().softmax(-1)
        a, b = p_ref.argmax(-1), p_cand.argmax(-1)
        n += len(labels)
        same += int((a == b).sum())
        right_ref += int((a == labels).sum())
        right_cand += int((b == labels).sum())
        drift = (p_ref - p_cand).abs()
        max_drift = max(max_drift, float(drift.max()))
        drift_sum += float(drift.sum())
    if n == 0:
        raise QuantizationError("no images to compare the two models on")
    classes = p_ref.shape[-1]
    return {"images": n, "top1_reference": right_ref / n, "top1_candidate": right_cand / n,
            "top1_drop_points": 100 * (right_ref - right_cand) / n, "top1_agreement": same / n,
            "max_prob_drift": max_drift, "mean_prob_drift": drift_sum / (n * classes)}


__all__ = ["QuantizationError", "compare_predictions", "quantize_int8", "quantize_onnx_int8", "verify_int8_onnx"]
