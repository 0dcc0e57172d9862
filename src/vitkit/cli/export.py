"""`vitkit export`: a checkpoint (or a registered model, randomly initialised) → one ONNX file, verified."""
from __future__ import annotations

import time

from ..export import export_onnx, verify_onnx
from ..infer import load_model


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


def run(args) -> int:
    src = load_model(args.source, args.img_size, warn=False)
    (h, w), c = src.record["img_size"], src.record["in_chans"]
    metadata = {} if src.random_weights else dict(src.record, checkpoint=str(args.source))
    print(f"exporting {src.origin}")
    start = time.perf_counter()
    path = export_onnx(src.model, args.onnx, img_size=(h, w), in_chans=c, opset=args.opset, metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, input images (B, {c}, {h}, {w}), "
          f"{time.perf_counter() - start:.1f} s)")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    diffs = verify_onnx(src.model, path)
    print("onnxruntime vs PyTorch: max |Δ| " + ", ".join(f"{d:.1e} at batch {b}" for b, d in diffs.items()))
    return 0
