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
from .errors import VitkitError
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
EXPORTER_OPSET = 18  # the opset torch.onnx's exporter (onnxscript's torchlib) writes natively with torch 2.13
# What the metadata carries beyond the model name and input: what predict needs, and no local path.
EXPORTED_FIELDS = ("classes", "mean", "std", "crop_pct")


class OnnxError(VitkitError):
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
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
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


def check_destination(path: str | Path, opset: int | None = None) -> Path:
    """Refuse, before any work, an output path `export_onnx` could not write or `vitkit predict` would not
    recognise, and an opset outside what onnx knows."""
    path = Path(path)
    if path.is_dir():
        raise OnnxError(f"{path} is a folder; pass a file name such as {path / 'model.onnx'}")
    if path.suffix.lower() != ".onnx":
        raise OnnxError(f"{path} does not end in .onnx; name it so (vitkit predict and eval tell an ONNX file by "
                        f"that suffix)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OnnxError(f"{parent} is a file, so {path} cannot be written below it; pass another path")
    if opset is not None:
        _require("onnx")
        import onnx
        newest = onnx.defs.onnx_opset_version()
        if not isinstance(opset, int) or not 1 <= opset <= newest:
            raise OnnxError(f"opset {opset} does not exist: onnx {onnx.__version__} knows opsets 1 to {newest}; "
                            f"leave --opset out for the exporter's ({EXPORTER_OPSET})")
    return path


def export_onnx(model: nn.Module, path: str | Path, *, img_size: int | tuple[int, int], in_chans: int,
                opset: int | None = None, dynamic_batch: bool = True, metadata: dict | None = None) -> Path:
    """Export `model` (in eval mode) to one ONNX file, written atomically; returns the path.

    Input 'images' (B, in_chans, H, W) float32, already normalised; output 'logits' (B, K). B is a
    dynamic axis unless dynamic_batch=False (then the graph takes batches of 1 only).
    opset: the ONNX opset (default: the exporter's, 18 with torch 2.13). One below 18 is converted down with
        onnx's version converter, or refused with the reason (e.g. LayerNormalization has no form before 17).
    metadata: fields for the 'vitkit' metadata record (classes, mean, std, ...); they override the defaults of
        `default_metadata`. img_size, in_chans and the model name are set here.
    """
    _require("onnx", "onnxscript")
    path = check_destination(path, opset)
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
        native = opset if opset is None or opset >= EXPORTER_OPSET else None  # lower ones: converted below
        with _quiet_exporter():  # under no_grad, as the fused attention decomposes only there (see above)
            program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=native, dynamo=True,
                                        dynamic_shapes=dynamic, verbose=False)
    program.model.metadata_props[METADATA_KEY] = to_json(record)
    proto = program.model_proto
    if opset is not None and native is None:
        proto = _convert_opset(proto, opset, name)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise OnnxError(f"asked for opset {opset} but the exporter wrote opset {written}; pass --opset {written}, "
                        f"or leave --opset out")
    import onnx
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return path


def _convert_opset(proto, opset: int, name: str):
    """The model converted down to `opset` by onnx's version converter, or an OnnxError with its reason."""
    import onnx.version_converter
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
    except Exception as e:  # onnx raises RuntimeError / ConvertError with the operator it cannot convert
        reason = " ".join(str(e).split(":")[-1].split()) or type(e).__name__
        raise OnnxError(f"{name} cannot be written as ONNX opset {opset}: onnx's converter says {reason!r}; pass "
                        f"--opset {EXPORTER_OPSET} or later (the exporter's own is {EXPORTER_OPSET}), or leave "
                        f"--opset out") from None
    for prop in proto.metadata_props:  # the converter keeps the graph; keep our record with it
        if prop.key not in {p.key for p in converted.metadata_props}:
            converted.metadata_props.add(key=prop.key, value=prop.value)
    return converted


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
        problems = metadata_problems(self.metadata, self.session.get_inputs()[0].shape,
                                     self.session.get_outputs()[0].shape)
        if problems:
            raise OnnxError(f"{self.path}: its vitkit metadata does not fit its graph ({'; '.join(problems)}); the "
                            f"metadata was edited or belongs to another model: export it again with `vitkit export`")
        self.input_name = self.session.get_inputs()[0].name

    @property
    def data(self) -> dict:
        """classes, mean, std, img_size, in_chans: the same fields as a checkpoint's data record."""
        return self.metadata

    def __call__(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W), normalised → logits (B, K)."""
        c, (h, w) = self.metadata["in_chans"], self.metadata["img_size"]
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, h, w):
            raise OnnxError(f"{self.path} takes images shaped (B, {c}, {h}, {w}) but got {tuple(images.shape)}; "
                            f"prepare them as `vitkit predict` does (its channels, resized and centre-cropped)")
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])
        except Exception as e:  # onnxruntime's own types (InvalidArgument, Fail, ...), none a Python built-in
            raise OnnxError(f"onnxruntime could not run {self.path} on a batch shaped {tuple(images.shape)} "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); export it again with "
                            f"`vitkit export`") from e


def metadata_problems(meta: dict, input_shape: Sequence, output_shape: Sequence) -> list[str]:
    """What in a vitkit metadata record disagrees with the graph's input (B, C, H, W) and output (B, K) shapes,
    or is malformed; empty when it all fits. Symbolic dimensions (strings) are not compared."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    problems = []
    c, size, classes = meta.get("in_chans"), meta.get("img_size"), meta.get("classes")
    if not count(c):
        problems.append(f"in_chans {c!r} is not a channel count")
    if not (isinstance(size, list) and len(size) == 2 and all(count(v) for v in size)):
        problems.append(f"img_size {size!r} is not [H, W]")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)) or (count(c) and len(v) != c):
            problems.append(f"{key} {v!r} is not one number per channel")
    if not (isinstance(classes, list) and all(isinstance(n, str) for n in classes)):
        problems.append(f"classes {str(classes)[:60]} is not a list of names")
    if problems:
        return problems
    graph_in = list(input_shape)
    if len(graph_in) != 4:
        return [f"the graph's input has {len(graph_in)} dimensions, not (B, C, H, W)"]
    for what, says, graph in (("channels", c, graph_in[1]), ("height", size[0], graph_in[2]),
                              ("width", size[1], graph_in[3])):
        if isinstance(graph, int) and graph != says:
            problems.append(f"it says {what} {says}, the graph takes {graph}")
    graph_out = list(output_shape)
    if len(graph_out) == 2 and isinstance(graph_out[1], int) and graph_out[1] != len(classes):
        problems.append(f"it names {len(classes)} classes, the graph gives {graph_out[1]} logits")
    return problems


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


__all__ = ["EXPORTED_FIELDS", "EXPORTER_OPSET", "OnnxClassifier", "OnnxError", "OnnxUnavailable", "check_destination",
           "default_metadata", "export_onnx", "metadata_problems", "read_onnx_metadata", "verify_onnx"]
