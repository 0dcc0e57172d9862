"""`vitkit predict`: the top-k labels, with probabilities, for each image."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, Iterable

FORMATS = ("text", "jsonl", "json", "csv")
_SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".txt": "text"}


def add_parser(sub, name):
    p = sub.add_parser(name, help="classify images with a checkpoint or an exported .onnx file",
                       description="Print the top-k classes with probabilities for each image. Images are "
                                   "converted to the model's channels, resized (short side, aspect kept) and "
                                   "centre-cropped as in the run's evaluation, and read --batch-size at a time. "
                                   "An .onnx file written by `vitkit export` runs in onnxruntime instead of PyTorch.")
    p.add_argument("checkpoint", help="a vitkit checkpoint (e.g. runs/demo/best.safetensors), any file or folder "
                                      "vitkit.load_pretrained reads (a Hugging Face folder, a JAX .npz, a timm or "
                                      "torchvision state dict with --name), or an .onnx file from `vitkit export`")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...), folders of them, or globs ('pics/*.jpg')")
    p.add_argument("--name", help="architecture name, for a plain timm/torchvision state dict")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--format", choices=FORMATS, help="text (default), jsonl (one JSON object per image), json "
                                                     "(one array), csv (image,rank,label,prob); default: from the "
                                                     "--out suffix, else text")
    p.add_argument("--json", action="store_true", help="the same as --format jsonl")
    p.add_argument("--out", metavar="FILE", help="write there instead of to the screen (.csv, .json, .jsonl)")
    p.add_argument("--batch-size", type=int, default=64, help="images read and classified at a time (default: 64)")
    p.add_argument("--int8", action="store_true",
                   help="run the PyTorch model with int8 Linear layers (dynamic quantisation; CPU): about 2× faster "
                        "than fp32 for a ViT; `vitkit eval CKPT --int8` shows what it costs in accuracy")
    p.add_argument("--bf16", action="store_true",
                   help="run the PyTorch model under bf16 autocast: several times faster on CPUs with AMX or "
                        "AVX-512 BF16, probabilities within about 1e-2 of fp32 (see BENCHMARKS.md); on other CPUs "
                        "it would be slower, so vitkit warns and runs fp32")


def _format(args) -> str:
    if args.json:
        if args.format not in (None, "jsonl"):
            raise ValueError(f"--json means --format jsonl; drop one of --json and --format {args.format}")
        return "jsonl"
    if args.format:
        return args.format
    if args.out:
        suffix = Path(args.out).suffix.lower()
        if suffix not in _SUFFIX_FORMATS:
            raise ValueError(f"cannot tell the format of {args.out} from its suffix; name it .csv, .json or .jsonl, "
                             f"or pass --format")
        return _SUFFIX_FORMATS[suffix]
    return "text"


def write_results(rows: Iterable[dict], fmt: str, out: IO[str]) -> int:
    """Write classification results as they come; returns how many images were written."""
    n = 0
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["image", "rank", "label", "prob"])
    if fmt == "json":
        out.write("[")
    for r in rows:
        if fmt == "jsonl":
            out.write(json.dumps(r) + "\n")
        elif fmt == "json":
            out.write(("\n  " if n == 0 else ",\n  ") + json.dumps(r))
        elif writer is not None:
            writer.writerows([r["image"], k, t["label"], t["prob"]] for k, t in enumerate(r["top"], 1))
        else:
            out.write(r["image"] + "\n")
            out.writelines(f"  {t['label']:>12}  {t['prob']:.3f}  {'█' * round(t['prob'] * 30)}\n" for t in r["top"])
        out.flush()
        n += 1
    if fmt == "json":
        out.write("\n]\n" if n else "]\n")
    return n


def run(args) -> int:
    from ..infer import image_paths, iter_classify, load_model, looks_like_path, resolve_bf16

    fmt = _format(args)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.out and Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; pass a file name such as "
                                f"{Path(args.out) / 'predictions.csv'}")
    if not Path(args.checkpoint).exists() and looks_like_path(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist; check the path")
    paths = image_paths(args.images)  # every argument checked before the model is loaded
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        from ..export import OnnxClassifier
        if args.int8:
            raise ValueError("--int8 quantises a PyTorch checkpoint; for an ONNX file, export it with "
                             "`vitkit export CKPT --onnx OUT --int8` and predict with that file")
        model, bf16 = OnnxClassifier(args.checkpoint), args.bf16  # iter_classify refuses bf16 for it
        record = model.data
    else:
        loaded = load_model(args.checkpoint, name=args.name)
        model, record, bf16 = loaded.model, loaded.record, resolve_bf16(args.bf16)
        if args.int8:
            if bf16:
                raise ValueError("--int8 and --bf16 are two ways to run faster; pass one of them")
            from ..quantize import quantize_int8
            model = quantize_int8(model)
    rows = iter_classify(model, record, paths, args.top_k, bf16=bf16, batch_size=args.batch_size)
    if not args.out:
        write_results(rows, fmt, sys.stdout)
        return 0
    from ..weights import atomic_write

    written = []

    def write(tmp: str) -> None:  # the whole file, or none: a failed image leaves no half-written file behind
        with open(tmp, "w", newline="") as f:
            written.append(write_results(rows, fmt, f))
    atomic_write(args.out, write)
    print(f"wrote {written[0]} prediction(s) to {args.out} ({fmt})", file=sys.stderr)
    return 0
