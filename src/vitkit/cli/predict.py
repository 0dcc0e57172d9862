"""`vitkit predict`: the top-k labels, with probabilities, for each image."""
from __future__ import annotations

import json
from pathlib import Path

from ..infer import classify_images, load_model


def add_parser(sub, name):
    p = sub.add_parser(name, help="classify images with a checkpoint or an exported .onnx file",
                       description="Print the top-k classes with probabilities for each image. Images are "
                                   "converted to the model's channels, resized (short side, aspect kept) and "
                                   "centre-cropped as in the run's evaluation. An .onnx file written by "
                                   "`vitkit export` runs in onnxruntime instead of PyTorch.")
    p.add_argument("checkpoint", help="a vitkit checkpoint (e.g. runs/demo/best.safetensors) or an .onnx file "
                                      "from `vitkit export`")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--bf16", action="store_true",
                   help="run the PyTorch model under bf16 autocast: several times faster on CPUs with AMX or "
                        "AVX-512 BF16, probabilities within about 1e-2 of fp32 (see BENCHMARKS.md)")


def run(args) -> int:
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        from ..export import OnnxClassifier
        model = OnnxClassifier(args.checkpoint)
        record = model.data
    else:
        loaded = load_model(args.checkpoint) if Path(args.checkpoint).exists() else None
        if loaded is None:
            raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
        model, record = loaded.model, loaded.record
    for r in classify_images(model, record, args.images, args.top_k, bf16=args.bf16):
        if args.json:
            print(json.dumps(r))
            continue
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['label']:>12}  {t['prob']:.3f}  {'█' * round(t['prob'] * 30)}")
    return 0
