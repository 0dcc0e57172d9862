"""ONNX export: a model → one self-describing .onnx file, checked against PyTorch with onnxruntime.

    export_onnx(model, "model.onnx", img_size=224, in_chans=3)   # input 'images' (B, C, H, W) → 'logits' (B, K)
    verify_onnx(model, "model.onnx")                             # {1: max |Δ|, 5: max |Δ|}
    OnnxClassifier("model.onnx")(images)                         # (B, C, H, W) → (B, K), onnxruntime on the CPU

The file carries what `vitkit predict` needs in its metadata_props, under the key 'vitkit', as JSON:
    {"format": "vitkit-onnx", "vitkit_version", "model": registered name, "classes", "mean", "std",
     "img_size": [H, W], "in_chans", ...}

How it exports: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), with the batch axis
declared dynamic. torch.export either proves the graph holds for every batch size or refuses; the
TorchScript tracer (dynamo=False) is deprecated and would silently bake in any size it saw. The model
runs its usual fused attention (`F.scaled_dot_product_attention`, written out as MatMul/Softmax in
ONNX). Export runs under torch.no_grad(): with autograd on, torch 2.13 fails to decompose the fused
attention of Swin's shifted windows ("Cannot view a tensor with shape ...").
"""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from . import __version__
from .layers.patch_embed import to_2tuple
from .models._common import eval_mode
from .registry import get_entry
from .weights import atomic_write
from .weights.io import to_json

FORMAT = "vitkit-onnx"
METADATA_KEY = "vitkit"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
_INSTALL = "pip install onnx onnxruntime onnxscript"
_MAX_BYTES = 2_000_000_000  # protobuf's limit on one file, less a margin for the graph


class OnnxError(ValueError):
    """An ONNX file that cannot be written, read or trusted."""


class OnnxUnavailable(ImportError, RuntimeError):
    """onnx, onnxruntime or onnxscript is not installed. (Also a RuntimeError, so the CLI shows the message.)"""


def _require(*modules: str) -> None:
    missing = []
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxUnavailable(f"ONNX export and inference need {' and '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not installed: {_INSTALL}")


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise (a warning per torchvision op when torchvision is absent, deprecation notes)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def default_metadata(model_name: str, in_chans: int, num_classes: int) -> dict:
    """classes '0'..'K-1' and the registered model's mean/std (0.5 per channel if they don't fit in_chans)."""
    try:
        entry = get_entry(model_name)
        mean, std = entry.mean, entry.std
    except KeyError:  # a model built outside the registry
        mean, std = (), ()
    if len(mean) != in_chans:  # as training does
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans
    return {"classes": [str(i) for i in range(num_classes)], "mean": list(mean), "std": list(std)}


def export_onnx(model: nn.Module, path: str | Path, *, img_size: int | tuple[int, int], in_chans: int,
                opset: int | None = None, dynamic_batch: bool = True, metadata: dict | None = None) -> Path:
    """Export `model` (in eval mode) to one ONNX file, written atomically; returns the path.

    Input 'images' (B, in_chans, H, W) float32, already normalised; output 'logits' (B, K). B is a
    dynamic axis unless dynamic_batch=False (then the graph takes batches of 1 only).
    opset: the ONNX opset (default: the exporter's, 20 with torch 2.13).
    metadata: fields for the 'vitkit' metadata record (classes, mean, std, source, ...); they
        override the defaults of `default_metadata`. img_size, in_chans and the model name are set here.
    """
    _require("onnx", "onnxscript")
    path = Path(path)
    h, w = to_2tuple(img_size)
    n_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    if n_bytes > _MAX_BYTES:
        raise OnnxError(f"the model's weights take {n_bytes / 1e9:.1f} GB but one ONNX file holds at most 2 GB; "
                        f"export a smaller variant")
    # a batch of 2: torch.export would specialise an example batch of 1 into the graph
    example = torch.randn(2 if dynamic_batch else 1, in_chans, h, w, device=_device(model))
    name = getattr(model, "model_name", type(model).__name__)
    with eval_mode(model), torch.no_grad():
        num_classes = model(example[:1]).shape[-1]
        record = {"format": FORMAT, "vitkit_version": __version__, "model": name,
                  **default_metadata(name, in_chans, num_classes), **(metadata or {}),
                  "img_size": [h, w], "in_chans": in_chans}
        if len(record["classes"]) != num_classes:
            raise OnnxError(f"metadata has {len(record['classes'])} classes but {name} outputs {num_classes} "
                            f"logits; pass one class name per output")
        dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        with _quiet_exporter():  # under no_grad, as the fused attention decomposes only there (see above)
            program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                        dynamic_shapes=dynamic, verbose=False)
    program.model.metadata_props[METADATA_KEY] = to_json(record)
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    return path


# ---------------------------------------------------------------------------------------------
# Reading and running
# ---------------------------------------------------------------------------------------------

class OnnxClassifier:
    """An exported vitkit model run by onnxruntime on the CPU: (B, C, H, W) float tensor → (B, K) logits.

    .metadata is the 'vitkit' record written by `export_onnx` (classes, mean, std, img_size, in_chans, ...).
    """

    def __init__(self, path: str | Path):
        _require("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxError(f"ONNX model {self.path} does not exist" if not self.path.exists() else
                            f"{self.path} is a folder; pass the .onnx file inside it")
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
            raise OnnxError(f"{self.path} is not a readable ONNX model ({type(e).__name__}: {str(e).strip()[:300]}); "
                            f"it may be truncated or corrupt: export it again with `vitkit export`") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise OnnxError(f"{self.path} is an ONNX model but has no vitkit metadata (classes, mean/std, input "
                            f"size), so vitkit cannot prepare its input; export it with `vitkit export`")
        try:
            self.metadata = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise OnnxError(f"{self.path}: its vitkit metadata is not valid JSON ({e}); export it again") from e
        self.input_name = self.session.get_inputs()[0].name

    @property
    def data(self) -> dict:
        """classes, mean, std, img_size, in_chans: the same fields as a checkpoint's data record."""
        return self.metadata

    def __call__(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W), normalised → logits (B, K)."""
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def read_onnx_metadata(path: str | Path) -> dict:
    """The 'vitkit' metadata record of an exported file."""
    return OnnxClassifier(path).metadata


def verify_onnx(model: nn.Module, path: str | Path, batch_sizes: Sequence[int] = (1, 5),
                atol: float = 1e-4) -> dict[int, float]:
    """Run the file in onnxruntime and `model` in PyTorch (eval mode) on the same random inputs.

    Returns {batch size: max |onnx − torch|} over the logits; raises OnnxError if any exceeds atol.
    """
    onnx_model = OnnxClassifier(path)
    h, w = onnx_model.metadata["img_size"]
    c = onnx_model.metadata["in_chans"]
    gen = torch.Generator().manual_seed(0)
    diffs = {}
    with eval_mode(model), torch.no_grad():
        for b in batch_sizes:
            x = torch.randn(b, c, h, w, generator=gen)
            expected = model(x.to(_device(model))).float().cpu()
            try:
                got = onnx_model(x)
            except Exception as e:
                raise OnnxError(f"{path} failed to run in onnxruntime at batch {b} ({type(e).__name__}: "
                                f"{str(e).strip()[:300]})") from e
            if got.shape != expected.shape:
                raise OnnxError(f"{path} gives logits of shape {tuple(got.shape)} at batch {b} but PyTorch gives "
                                f"{tuple(expected.shape)}; the export is wrong")
            diffs[b] = float((got - expected).abs().max())
    bad = {b: d for b, d in diffs.items() if not d <= atol}  # `not <=` also catches NaN
    if bad:
        shown = ", ".join(f"{d:.2e} at batch {b}" for b, d in bad.items())
        raise OnnxError(f"{path} does not match PyTorch: max |Δ| {shown} (allowed {atol:.0e}); the exported "
                        f"graph computes something else, so do not use it")
    return diffs


__all__ = ["OnnxClassifier", "OnnxError", "OnnxUnavailable", "default_metadata",
           "export_onnx", "read_onnx_metadata", "verify_onnx"]
