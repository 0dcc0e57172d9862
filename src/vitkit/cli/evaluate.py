"""`vitkit eval`: accuracy, loss and confusion matrix of a checkpoint."""
from __future__ import annotations

import json

from torch.utils.data import DataLoader

from ..data import build_dataset
from ..train import eval_transform, evaluate, resolve_device, validation_set
from ..train.image_data import Transformed
from ..weights import load_checkpoint


def add_parser(sub, name):
    p = sub.add_parser(name, help="evaluate a checkpoint (top-1, top-5, loss, confusion matrix)",
                       description="Evaluate a vitkit checkpoint. By default it uses the validation split the "
                                   "checkpoint was trained with (same data, seed and fraction), so the figure "
                                   "matches training's; --data evaluates on every image of another source.")
    p.add_argument("checkpoint", help="a vitkit checkpoint, e.g. runs/demo/best.safetensors")
    p.add_argument("--data", help="embedded set or ImageFolder directory to evaluate on (default: the training "
                                  "run's validation split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    d = ckpt.data
    source = args.data or d["source"]
    if args.data:
        dataset = build_dataset(source, img_size=None if source not in ("digits", "mnist") else tuple(d["img_size"]),
                                in_chans=d["in_chans"])
        if list(dataset.classes) != ckpt.classes:
            raise ValueError(f"{source} has classes {list(dataset.classes)[:10]} but the checkpoint was trained on "
                             f"{ckpt.classes[:10]}; evaluate on data with the same class folders")
    else:
        dataset = validation_set(d)
    device = resolve_device(args.device)
    model = ckpt.build_model().to(device)
    loader = DataLoader(Transformed(dataset, eval_transform(d)), batch_size=args.batch_size)
    res = evaluate(model, loader, len(ckpt.classes), device)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": source, "images": res.count, "loss": res.loss,
                          "top1": res.top1, "top5": res.top5, "classes": ckpt.classes,
                          "confusion": res.confusion.tolist()}))
        return 0
    split_name = "all images" if args.data else (f"validation folder {d['val_data']}" if d.get("val_data") else
                                                 f"validation split ({d['val_fraction']:.0%}, seed {d['seed']})")
    print(f"{args.checkpoint}: {ckpt.model_name} on {source}, {split_name}: {res.count} images")
    print(f"top-1 {res.top1:.4f}   top-5 {res.top5:.4f}   loss {res.loss:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    names = [str(c)[:6] for c in ckpt.classes]
    w = max(6, max(len(n) for n in names))
    print(" " * w + " " + " ".join(f"{n:>{w}}" for n in names))
    for name, row in zip(names, res.confusion.tolist()):
        print(f"{name:>{w}} " + " ".join(f"{v:>{w}}" for v in row))
    return 0
