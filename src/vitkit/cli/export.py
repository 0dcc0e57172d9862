"""`vitkit export`: a checkpoint (or a registered model, randomly initialised) → one ONNX file, verified."""
from __future__ import annotations

import sys
import time
from pathlib import Path

SPLIT_FIELDS = ("source", "seed", "val_fraction", "class_filter")


def add_parser(sub, name):
    p = sub.add_parser(name, help="export a checkpoint to ONNX, checked against PyTorch with onnxruntime",
                       description="Write one .onnx file with a dynamic batch axis (input 'images' (B, C, H, W), "
                                   "normalised; output 'logits'). It carries the classes, mean/std and input size "
                                   "(no local path), so `vitkit predict model.onnx IMAGE` needs nothing else. Needs "
                                   "`pip install onnx onnxruntime onnxscript`.")
    p.add_argument("source", metavar="CHECKPOINT_OR_NAME",
                   help="a vitkit checkpoint (e.g. runs/demo/best.safetensors), any file or folder "
                        "vitkit.load_pretrained reads (a Hugging Face folder, a JAX .npz, a timm or torchvision "
                        "state dict with --name), or a registered model name (random weights: for trying the "
                        "pipeline only)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--name", help="architecture name, for a plain timm/torchvision state dict")
    p.add_argument("--img-size", type=int, help="input size (default: the model's); a vitkit checkpoint is "
                                                "exported at the size it was trained at")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 18); lower ones are converted "
                                             "down where onnx can, or refused with the reason")
    p.add_argument("--int8", action="store_true",
                   help="write the Linear layers' weights in int8 (onnxruntime's dynamic quantisation, per channel): "
                        "a smaller, faster file on the CPU; verified by top-1 agreement with PyTorch's fp32 instead "
                        "of |Δ| ≤ 1e-4 (`vitkit eval OUT` measures its accuracy)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip running the file in onnxruntime against PyTorch at batch 1 and 5")


def run(args) -> int:
    from ..data import EMBEDDED
    from ..export import EXPORTED_FIELDS, check_destination, export_onnx, verify_onnx
    from ..infer import load_model

    check_destination(args.onnx, args.opset)  # before the model is loaded and the export's seconds are spent
    src = load_model(args.source, args.img_size, name=args.name, warn=False)
    for note in src.notes:
        print(f"vitkit export: note: {note}", file=sys.stderr)
    (h, w), c = src.record["img_size"], src.record["in_chans"]
    metadata = {} if src.random_weights else {k: src.record[k] for k in EXPORTED_FIELDS
                                              if src.record.get(k) is not None}
    if not src.random_weights and src.record.get("source") in EMBEDDED and not src.record.get("val_data"):
        # trained on a built-in set: the split, so that `vitkit eval model.onnx` rebuilds it (no path involved)
        metadata.update({k: src.record[k] for k in SPLIT_FIELDS if k in src.record})
    print(f"exporting {src.origin}")
    start = time.perf_counter()
    if args.int8:
        import tempfile

        from ..quantize import quantize_onnx_int8, verify_int8_onnx
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(src.model, Path(tmp) / "fp32.onnx", img_size=(h, w), in_chans=c, opset=args.opset,
                               metadata=metadata)
            path = quantize_onnx_int8(fp32, args.onnx)
    else:
        path = export_onnx(src.model, args.onnx, img_size=(h, w), in_chans=c, opset=args.opset, metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB{', int8 weights' if args.int8 else ''}, input images "
          f"(B, {c}, {h}, {w}), {time.perf_counter() - start:.1f} s)")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    if args.int8:
        check = verify_int8_onnx(src.model, path)
        print(f"onnxruntime int8 vs PyTorch fp32 on {check['images']} random images: same top-1 on "
              f"{100 * check['top1_agreement']:.1f}%, max |Δlogit| {check['max_abs_logit_diff']:.2e} (logits span "
              f"{check['logit_span']:.2f}); `vitkit eval {path}` gives its accuracy")
        return 0
    diffs = verify_onnx(src.model, path)
    print("onnxruntime vs PyTorch: max |Δ| " + ", ".join(f"{d:.1e} at batch {b}" for b, d in diffs.items()))
    return 0
