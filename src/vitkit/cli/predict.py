"""`vitkit predict`: the top-k labels, with probabilities, for each image."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import EvalTransform, load_image
from ..infer import micro_batch_size, predict_logits
from ..weights import load_checkpoint


def add_parser(sub, name):
    p = sub.add_parser(name, help="classify images with a checkpoint or an exported .onnx file",
                       description="Print the top-k classes with probabilities for each image. Images are "
                                   "converted to the model's channels and resized to its input size. An .onnx "
                                   "file written by `vitkit export` runs in onnxruntime instead of PyTorch.")
    p.add_argument("checkpoint", help="a vitkit checkpoint (e.g. runs/demo/best.safetensors) or an .onnx file "
                                      "from `vitkit export`")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--bf16", action="store_true",
                   help="run the PyTorch model under bf16 autocast: several times faster on CPUs with AMX or "
                        "AVX-512 BF16, probabilities within about 1e-2 of fp32 (see BENCHMARKS.md)")


def load_backend(path: str) -> tuple[Callable[[Tensor], Tensor], dict]:
    """(images (B, C, H, W) normalised → logits (B, K), data record: classes, mean, std, img_size, in_chans).

    An .onnx file runs in onnxruntime; anything else is read as a vitkit checkpoint and runs in PyTorch.
    """
    if Path(path).suffix.lower() == ".onnx":
        from ..export import OnnxClassifier
        model = OnnxClassifier(path)
        return model, model.data
    ckpt = load_checkpoint(path)
    return ckpt.build_model(), dict(ckpt.data, classes=ckpt.classes)


@torch.no_grad()
def predict(model: Callable[[Tensor], Tensor], data: dict, paths: list[str], top_k: int,
            bf16: bool = False) -> list[dict]:
    size = tuple(data["img_size"])
    batch = torch.stack([load_image(p, in_chans=data["in_chans"], img_size=size) for p in paths])
    x = EvalTransform(size, data["mean"], data["std"])(batch)
    if isinstance(model, nn.Module):  # PyTorch: a few images at a time on the CPU (vitkit.infer)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = predict_logits(model, x, micro_batch_size(model, size, len(x), in_chans=data["in_chans"]))
    elif bf16:
        raise ValueError("--bf16 runs a PyTorch checkpoint under autocast; an .onnx file runs in fp32")
    else:
        logits = model(x)
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    classes = data["classes"]
    return [{"image": str(p), "top": [{"label": classes[i], "prob": round(float(v), 6)}
                                      for v, i in zip(vals.tolist(), idx.tolist())]}
            for p, vals, idx in zip(paths, top.values, top.indices)]


def run(args) -> int:
    model, data = load_backend(args.checkpoint)
    results = predict(model, data, args.images, args.top_k, bf16=args.bf16)
    for r in results:
        if args.json:
            print(json.dumps(r))
            continue
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['label']:>12}  {t['prob']:.3f}  {'█' * round(t['prob'] * 30)}")
    return 0
