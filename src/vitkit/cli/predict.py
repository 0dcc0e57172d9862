"""`vitkit predict`: the top-k labels, with probabilities, for each image."""
from __future__ import annotations

import json

import torch

from ..data import EvalTransform, load_image
from ..weights import load_checkpoint


def add_parser(sub, name):
    p = sub.add_parser(name, help="classify images with a checkpoint",
                       description="Print the top-k classes with probabilities for each image. Images are "
                                   "converted to the checkpoint's channels and resized to its input size.")
    p.add_argument("checkpoint", help="a vitkit checkpoint, e.g. runs/demo/best.safetensors")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")


@torch.no_grad()
def predict(ckpt, paths: list[str], top_k: int) -> list[dict]:
    d = ckpt.data
    model = ckpt.build_model()
    size = tuple(d["img_size"])
    batch = torch.stack([load_image(p, in_chans=d["in_chans"], img_size=size) for p in paths])
    probs = model(EvalTransform(size, d["mean"], d["std"])(batch)).softmax(dim=-1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    return [{"image": str(p), "top": [{"label": ckpt.classes[i], "prob": round(float(v), 6)}
                                      for v, i in zip(vals.tolist(), idx.tolist())]}
            for p, vals, idx in zip(paths, top.values, top.indices)]


def run(args) -> int:
    results = predict(load_checkpoint(args.checkpoint), args.images, args.top_k)
    for r in results:
        if args.json:
            print(json.dumps(r))
            continue
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['label']:>12}  {t['prob']:.3f}  {'█' * round(t['prob'] * 30)}")
    return 0
