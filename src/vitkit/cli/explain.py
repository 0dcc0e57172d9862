"""`vitkit explain`: attention maps, rollout and embedding figures as PNGs and one self-contained HTML report.

A checkpoint of a `vitkit train --objective caption` run gets a captioner's report instead: each image's greedy
caption and the cross-attention of every generated token over the image, with a token selector
(report.html#token=2 opens it at the second token).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..infer import image_paths, load_images, load_model
from ..train import eval_transform, validation_set


def add_parser(sub, name):
    p = sub.add_parser(name, help="attention maps and embedding figures, with an HTML report",
                       description="Write the [CLS] attention and rollout overlays of each image, the mean attention "
                                   "distance against depth, the position-embedding similarity and the patch-embedding "
                                   "filters as PNGs, and one self-contained report.html (open it in a browser; "
                                   "report.html#layer=3&head=mean opens it at layer 3). With a captioning "
                                   "checkpoint: each image's caption and the cross-attention of each generated "
                                   "token, one PNG per image and token (report.html#token=2 opens it at token 2).")
    p.add_argument("images", nargs="*", help="image files (png, jpg, ...), folders of them or globs; not with "
                                             "--study")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a vitkit checkpoint (e.g. runs/demo/best.safetensors), or any file or "
                                          "folder vitkit.load_pretrained reads (a Hugging Face folder, a JAX .npz, "
                                          "a timm or torchvision state dict with --name)")
    p.add_argument("--name", help="architecture name, for a plain timm/torchvision state dict")
    src.add_argument("--model", help="a registered model name with RANDOM weights (the maps then mean nothing)")
    p.add_argument("--out", default="runs/explain", help="output folder (default: runs/explain)")
    p.add_argument("--layers", type=int, nargs="+", help="attention-layer indices for the overlays (default: all; "
                                                         "negative counts from the end)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show per image (default: 5)")
    p.add_argument("--study", action="store_true", help="use validation images of the checkpoint's own training "
                                                         "data instead of IMAGE arguments (not for captioners)")
    p.add_argument("-n", "--num-images", type=int, default=8, help="validation images for --study (default: 8)")
    p.add_argument("--overlay-size", type=int, default=224, help="pixel size of the report's overlays (default: 224)")


STUDY_SCAN = 512  # validation images the model classifies to find its errors and a mix of classes


def study_indices(labels: list[int], preds: list[int], n: int) -> list[int]:
    """n validation indices for a study: the model's errors first, as many as half of n, then correct images,
    each part taken round-robin over the true classes so that the classes are mixed. Order is by index within a
    class, so the choice is the same on every run."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)

    def round_robin(pick, limit: int) -> list[int]:
        queues = [[i for i in by_class[c] if pick(i)] for c in sorted(by_class)]
        out: list[int] = []
        while len(out) < limit and any(queues):
            for q in queues:
                if q and len(out) < limit:
                    out.append(q.pop(0))
        return out

    wrong = round_robin(lambda i: preds[i] != labels[i], max(1, n // 2) if n > 1 else n)
    right = round_robin(lambda i: preds[i] == labels[i] and i not in wrong, n - len(wrong))
    chosen = wrong + right
    if len(chosen) < n:  # too few correct ones: more errors
        chosen += round_robin(lambda i: i not in chosen, n - len(chosen))
    return chosen


def _study_images(model, record: dict, n: int) -> tuple[torch.Tensor, list[str]]:
    """n validation images of the checkpoint's training run (as `vitkit train` held them out), chosen by
    `study_indices` among the first STUDY_SCAN (spread over the classes) after the model has classified them."""
    from ..data import dataset_labels
    from ..infer import predict_logits

    val = validation_set(record)
    labels = dataset_labels(val).tolist()
    scan = study_indices(labels, labels, min(len(labels), STUDY_SCAN))  # a class mix to classify
    normalised, view = eval_transform(record), eval_transform(record, normalise=False)
    raw = [val[i][0] for i in scan]
    preds = predict_logits(model, torch.stack([normalised(img) for img in raw]), 64).argmax(1).tolist()
    picked = study_indices([labels[i] for i in scan], preds, min(n, len(scan)))
    classes = record.get("classes") or []

    def name(label: int) -> str:
        return classes[label] if label < len(classes) else str(label)
    images = [view(raw[j]) for j in picked]
    names = [f"{record['source']} val #{scan[j]} (true: {name(labels[scan[j]])}"
             + (f", predicted: {name(preds[j])})" if preds[j] != labels[scan[j]] else ", correct)") for j in picked]
    return torch.stack(images), names


def _caption_report(args, model, record: dict, paths, title: str):
    """A captioner's report on the IMAGE files, each read as `vitkit caption` reads it (the run's channels,
    resized to its size)."""
    from ..data import load_image
    from ..data.sequences import Vocabulary
    from ..explain.report import explain_caption

    if "vocab" not in record:
        raise ValueError(f"{args.model} is a captioner, and its vocabulary is recorded in a checkpoint only: pass "
                         f"--checkpoint with a `vitkit train --objective caption` run")
    if args.study:
        raise ValueError("--study rebuilds a run's held-out images from its recorded split, which a captioning "
                         "checkpoint does not record: pass strip images as IMAGE arguments instead")
    if args.layers:
        raise ValueError("--layers picks the [CLS]-attention layers of a classifier's report; a captioner's report "
                         "shows its decoder's last cross-attention layer: drop --layers")
    size = tuple(record["img_size"])
    images = torch.stack([load_image(p, in_chans=record["in_chans"], img_size=size) for p in paths])
    return explain_caption(model, images, [str(p) for p in paths], vocab=Vocabulary(record["vocab"]),
                           max_len=record["tgt_len"] - 1, mean=record["mean"], std=record["std"],
                           overlay_size=args.overlay_size, out_dir=args.out, title=title)


def run(args) -> int:
    from ..explain.report import explain, write_report  # matplotlib only when this command runs

    if args.study and not args.checkpoint:
        raise ValueError("--study reads the training data recorded in a checkpoint; pass --checkpoint")
    if args.study and args.images:
        raise ValueError("--study picks validation images itself; drop the IMAGE arguments or --study")
    if not args.study and not args.images:
        raise ValueError("no images: pass IMAGE files, or --study with a checkpoint from `vitkit train`")
    paths = None if args.study else image_paths(args.images)  # checked before the model is loaded
    loaded = load_model(args.checkpoint or args.model, name=args.name)
    model, data = loaded.model, loaded.record
    source = args.checkpoint or f"{args.model} (random weights)"
    if callable(getattr(model, "token_x", None)):  # a captioner (models/captioner.py)
        report = _caption_report(args, model, data, paths, f"vitkit explain: {source}")
    else:
        if args.study:
            images, names = _study_images(model, data, args.num_images)
        else:
            images, names = load_images(paths, data, normalise=False), [str(p) for p in paths]
        report = explain(model, images, names, classes=data.get("classes"), mean=data.get("mean"),
                         std=data.get("std"), layers=args.layers, top_k=args.top_k, overlay_size=args.overlay_size,
                         out_dir=args.out, title=f"vitkit explain: {source}")
    if args.model:
        report.notes.insert(0, "Random weights: these maps show an untrained network and mean nothing.")
    for note in report.notes:
        print(f"vitkit explain: note: {note}", file=sys.stderr)
    path = write_report(report, args.out)
    pngs = sorted(p.name for p in Path(args.out).glob("*.png"))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {len(pngs)} PNGs in {args.out}")
    return 0
