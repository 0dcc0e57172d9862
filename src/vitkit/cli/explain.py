"""`vitkit explain`: attention maps, rollout and embedding figures as PNGs and one self-contained HTML report."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..infer import load_images, load_model
from ..train import eval_transform, validation_set


def add_parser(sub, name):
    p = sub.add_parser(name, help="attention maps and embedding figures, with an HTML report",
                       description="Write the [CLS] attention and rollout overlays of each image, the mean attention "
                                   "distance against depth, the position-embedding similarity and the patch-embedding "
                                   "filters as PNGs, and one self-contained report.html (open it in a browser; "
                                   "report.html#layer=3&head=mean opens it at layer 3).")
    p.add_argument("images", nargs="*", help="image files (png, jpg, ...); not with --study")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a vitkit checkpoint, e.g. runs/demo/best.safetensors")
    src.add_argument("--model", help="a registered model name with RANDOM weights (the maps then mean nothing)")
    p.add_argument("--out", default="runs/explain", help="output folder (default: runs/explain)")
    p.add_argument("--layers", type=int, nargs="+", help="attention-layer indices for the overlays (default: all; "
                                                         "negative counts from the end)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show per image (default: 5)")
    p.add_argument("--study", action="store_true", help="use validation images of the checkpoint's own training "
                                                         "data instead of IMAGE arguments")
    p.add_argument("-n", "--num-images", type=int, default=8, help="validation images for --study (default: 8)")
    p.add_argument("--overlay-size", type=int, default=224, help="pixel size of the report's overlays (default: 224)")


def _study_images(record: dict, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first n validation images of the checkpoint's training run, as `vitkit train` held them out."""
    val = validation_set(record)
    view = eval_transform(record, normalise=False)
    classes = record.get("classes") or []
    images, names = [], []
    for i in range(min(n, len(val))):
        image, label = val[i]
        images.append(view(image))
        true = classes[int(label)] if int(label) < len(classes) else str(int(label))
        names.append(f"{record['source']} val #{i} (true: {true})")
    return torch.stack(images), names


def run(args) -> int:
    from ..explain.report import explain, write_report  # matplotlib only when this command runs

    if args.study and not args.checkpoint:
        raise ValueError("--study reads the training data recorded in a checkpoint; pass --checkpoint")
    if args.study and args.images:
        raise ValueError("--study picks validation images itself; drop the IMAGE arguments or --study")
    if not args.study and not args.images:
        raise ValueError("no images: pass IMAGE files, or --study with a checkpoint from `vitkit train`")
    loaded = load_model(args.checkpoint or args.model)
    model, data = loaded.model, loaded.record
    if args.study:
        images, names = _study_images(data, args.num_images)
    else:
        images, names = load_images(args.images, data, normalise=False), list(args.images)
    source = args.checkpoint or f"{args.model} (random weights)"
    report = explain(model, images, names, classes=data.get("classes"), mean=data.get("mean"), std=data.get("std"),
                     layers=args.layers, top_k=args.top_k, overlay_size=args.overlay_size, out_dir=args.out,
                     title=f"vitkit explain: {source}")
    if args.model:
        report.notes.insert(0, "Random weights: these maps show an untrained network and mean nothing.")
    for note in report.notes:
        print(f"vitkit explain: note: {note}", file=sys.stderr)
    path = write_report(report, args.out)
    pngs = sorted(p.name for p in Path(args.out).glob("*.png"))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {len(pngs)} PNGs in {args.out}")
    return 0
