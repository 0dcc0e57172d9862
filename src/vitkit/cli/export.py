"""`vitkit export`: a checkpoint (or a registered model, randomly initialised) → one ONNX file, verified."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..export import export_onnx, verify_onnx
from ..layers.patch_embed import to_2tuple
from ..registry import create_model, model_config
from ..weights import load_checkpoint


def add_parser(sub, name):
    p = sub.add_parser(name, help="export a checkpoint to ONNX, checked against PyTorch with onnxruntime",
                       description="Write one .onnx file with a dynamic batch axis (input 'images' (B, C, H, W), "
                                   "normalised; output 'logits'). It carries the classes, mean/std and input size, "
                                   "so `vitkit predict model.onnx IMAGE` needs nothing else. Needs "
                                   "`pip install onnx onnxruntime onnxscript`.")
    p.add_argument("source", metavar="CHECKPOINT_OR_NAME",
                   help="a vitkit checkpoint (e.g. runs/demo/best.safetensors), or a registered model name "
                        "(random weights: for trying the pipeline only)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--img-size", type=int, help="input size for a model name (default: the model's); a "
                                                "checkpoint is exported at the size it was trained at")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip running the file in onnxruntime against PyTorch at batch 1 and 5")


@dataclass
class Source:
    model: nn.Module        # eval mode
    img_size: tuple[int, int]
    in_chans: int
    metadata: dict          # for export_onnx: classes, mean, std, ... (empty: the model's defaults)
    origin: str             # where the weights come from, for the user


def load_source(source: str, img_size: int | None) -> Source:
    """A vitkit checkpoint file, or a registered model name built with random weights."""
    path = Path(source)
    if path.exists() or path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        ckpt = load_checkpoint(path)  # a clear error for a missing, corrupt or non-vitkit file
        cfg = model_config(ckpt.model_name, **ckpt.overrides)
        trained = to_2tuple(ckpt.data.get("img_size") or cfg.img_size)
        if img_size is not None and to_2tuple(img_size) != tuple(trained):
            raise ValueError(f"{source} was trained at {trained[0]}×{trained[1]}; --img-size {img_size} would need "
                             f"resampled position embeddings: leave --img-size out to export at the trained size")
        meta = dict(ckpt.data, overrides=ckpt.overrides, checkpoint=str(path))
        return Source(ckpt.build_model(), tuple(trained), ckpt.data.get("in_chans") or cfg.in_chans, meta,
                      f"{ckpt.model_name} from {source}")
    overrides = {} if img_size is None else {"img_size": img_size}
    cfg = model_config(source, **overrides)  # an unknown name → KeyError with close matches
    return Source(create_model(source, **overrides).eval(), to_2tuple(cfg.img_size), cfg.in_chans, {},
                  f"{source} with RANDOM weights (a model name, not a checkpoint: its predictions mean nothing)")


def run(args) -> int:
    src = load_source(args.source, args.img_size)
    (h, w), c = src.img_size, src.in_chans
    print(f"exporting {src.origin}")
    start = time.perf_counter()
    path = export_onnx(src.model, args.onnx, img_size=(h, w), in_chans=c, opset=args.opset, metadata=src.metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, input images (B, {c}, {h}, {w}), "
          f"{time.perf_counter() - start:.1f} s)")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    diffs = verify_onnx(src.model, path)
    print("onnxruntime vs PyTorch: max |Δ| " + ", ".join(f"{d:.1e} at batch {b}" for b, d in diffs.items()))
    return 0
