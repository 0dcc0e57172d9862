"""`vitkit explain`: attention maps, rollout and embedding figures as PNGs and one self-contained HTML report."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..data import build_dataset, load_image, split
from ..registry import create_model, get_entry
from ..weights import load_checkpoint


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


def _model_and_data(args):
    """(model in eval mode, data record: classes, mean, std, img_size, in_chans[, source, seed, val_fraction])."""
    if args.checkpoint:
        if Path(args.checkpoint).suffix.lower() == ".onnx":
            raise ValueError(f"{args.checkpoint} is an ONNX export; explain needs the attention weights of the "
                             f"PyTorch model, so pass the vitkit checkpoint it was exported from")
        ckpt = load_checkpoint(args.checkpoint)
        return ckpt.build_model(), dict(ckpt.data, classes=ckpt.classes)
    entry = get_entry(args.model)
    print(f"vitkit explain: warning: --model {args.model} has random weights; its attention maps, distances and "
          f"embeddings show an untrained network and mean nothing. Pass --checkpoint for a trained one.",
          file=sys.stderr)
    model = create_model(args.model).eval()
    size = getattr(entry.config, "img_size", 224)
    return model, {"classes": None, "mean": list(entry.mean), "std": list(entry.std),
                   "img_size": [size, size] if isinstance(size, int) else list(size),
                   "in_chans": getattr(entry.config, "in_chans", 3)}


def _study_images(data: dict, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first n validation images of the checkpoint's training data, split as `vitkit train` split it."""
    missing = [k for k in ("source", "seed", "val_fraction") if k not in data]
    if missing:
        raise ValueError(f"--study needs a checkpoint written by `vitkit train`; this one's data record lacks "
                         f"{', '.join(missing)}. Pass IMAGE files instead")
    ds = build_dataset(data["source"], img_size=tuple(data["img_size"]), in_chans=data["in_chans"])
    _, val = split(ds, data["val_fraction"], data["seed"])
    classes = data.get("classes") or []
    images, names = [], []
    for i in range(min(n, len(val))):
        image, label = val[i]
        images.append(image)
        true = classes[int(label)] if int(label) < len(classes) else str(int(label))
        names.append(f"{data['source']} val #{val.indices[i]} (true: {true})")
    return torch.stack(images), names


def run(args) -> int:
    from ..explain.report import explain, write_report  # matplotlib only when this command runs

    if args.study and not args.checkpoint:
        raise ValueError("--study reads the training data recorded in a checkpoint; pass --checkpoint")
    if args.study and args.images:
        raise ValueError("--study picks validation images itself; drop the IMAGE arguments or --study")
    if not args.study and not args.images:
        raise ValueError("no images: pass IMAGE files, or --study with a checkpoint from `vitkit train`")
    model, data = _model_and_data(args)
    size = tuple(data["img_size"])
    if args.study:
        images, names = _study_images(data, args.num_images)
    else:
        images = torch.stack([load_image(p, in_chans=data["in_chans"], img_size=size) for p in args.images])
        names = list(args.images)
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
