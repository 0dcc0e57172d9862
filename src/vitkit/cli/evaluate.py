"""`vitkit eval`: accuracy, loss and confusion matrix of a checkpoint or an exported .onnx file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

_SHORT_NAMES = 6  # class names up to this long head the confusion matrix's columns; longer ones get numbers


def add_parser(sub, name):
    p = sub.add_parser(name, help="evaluate a checkpoint (top-1, top-5, loss, confusion matrix)",
                       description="Evaluate a model. By default it uses the validation split a `vitkit train` "
                                   "checkpoint was trained with (same data, seed and fraction), so the figure "
                                   "matches training's; --data evaluates on every image of another source (needed "
                                   "for weights from elsewhere). Top-5 is reported for more than 5 classes only.")
    p.add_argument("checkpoint", help="a vitkit checkpoint (e.g. runs/demo/best.safetensors), any file or folder "
                                      "vitkit.load_pretrained reads (with --name for a plain state dict), or an "
                                      ".onnx file from `vitkit export` (run by onnxruntime on the CPU)")
    p.add_argument("--data", help="embedded set or ImageFolder directory to evaluate on (default: the training "
                                  "run's validation split)")
    p.add_argument("--name", help="architecture name, for a plain timm/torchvision state dict")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (an .onnx file runs on the CPU)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--int8", action="store_true",
                   help="also run the model in int8 (a checkpoint: `predict --int8`'s quantisation; an .onnx file: "
                        "`export --int8`'s) and report its accuracy, its top-1 agreement with fp32 and the largest "
                        "change of a probability")


def _onnx_module(path: str):
    """An exported file as an nn.Module (eval mode only), so the trainer's evaluate() can run it."""
    from torch import nn

    from ..export import OnnxClassifier

    class OnnxModule(nn.Module):
        def __init__(self, onnx: OnnxClassifier):
            super().__init__()
            self.onnx = onnx

        def forward(self, x):
            return self.onnx(x.cpu())

    onnx = OnnxClassifier(path)
    return OnnxModule(onnx).eval(), dict(onnx.data), f"{onnx.data.get('model', 'model')} (onnxruntime)"


def _dataset(args, record: dict, classes: list[str] | None, num_classes: int):
    """(data set, class names): --data, or the validation split the record describes."""
    from ..data import EMBEDDED, build_dataset
    from ..train import validation_set

    if not args.data:
        return validation_set(record), classes or [str(i) for i in range(num_classes)]
    embedded = args.data in EMBEDDED
    dataset = build_dataset(args.data, img_size=tuple(record["img_size"]) if embedded else None,
                            in_chans=record["in_chans"])
    found = [str(c) for c in dataset.classes]
    if classes is not None and found != list(classes):
        raise ValueError(f"{args.data} has classes {found[:10]} but the model was trained on {list(classes)[:10]}; "
                         f"evaluate on data with the same class folders")
    if classes is None and len(found) != num_classes:
        raise ValueError(f"{args.data} has {len(found)} classes but the model gives {num_classes} scores and names "
                         f"none; evaluate on data with {num_classes} class folders")
    return dataset, found


def confusion_lines(names: list[str], confusion: list[list[int]]) -> list[str]:
    """The matrix with rows = true class, columns = predicted. Short names head the columns; with longer ones the
    columns are numbered and each row gives its number and full name."""
    if all(len(n) <= _SHORT_NAMES for n in names):
        w = max(6, max(len(str(v)) for row in confusion for v in row))
        lines = [" " * w + " " + " ".join(f"{n:>{w}}" for n in names)]
        return lines + [f"{n:>{w}} " + " ".join(f"{v:>{w}}" for v in row) for n, row in zip(names, confusion)]
    w = max(len(str(len(names) - 1)), max(len(str(v)) for row in confusion for v in row))
    label_w = len(str(len(names) - 1)) + 1 + max(len(n) for n in names)
    lines = [" " * label_w + " " + " ".join(f"{i:>{w}}" for i in range(len(names)))]
    return lines + [f"{f'{i} {n}':<{label_w}} " + " ".join(f"{v:>{w}}" for v in row)
                    for i, (n, row) in enumerate(zip(names, confusion))]


def run(args) -> int:
    from torch.utils.data import DataLoader

    from ..infer import load_model
    from ..train import eval_transform, evaluate, resolve_device
    from ..train.image_data import Transformed

    if Path(args.checkpoint).suffix.lower() == ".onnx":
        model, record, origin = _onnx_module(args.checkpoint)
        device = resolve_device("cpu")
    else:
        loaded = load_model(args.checkpoint, name=args.name)
        for note in loaded.notes:
            print(f"vitkit eval: note: {note}", file=sys.stderr)
        model, record = loaded.model, loaded.record
        origin = getattr(model, "model_name", type(model).__name__)
        device = resolve_device(args.device)
        model = model.to(device)
    classes = record.get("classes")
    num_classes = len(classes) if classes else int(getattr(getattr(model, "cfg", None), "num_classes", 0) or 0)
    dataset, names = _dataset(args, record, classes, num_classes)
    loader = DataLoader(Transformed(dataset, eval_transform(record)), batch_size=args.batch_size)
    res = evaluate(model, loader, len(names), device)
    top5 = res.top5 if len(names) > 5 else None  # with 5 classes or fewer, every label is in the top 5
    int8 = _int8(args, model, loader) if args.int8 else None
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": args.data or record.get("source"),
                          "images": res.count, "loss": res.loss, "top1": res.top1, "top5": top5, "classes": names,
                          "confusion": res.confusion.tolist(), **({"int8": int8} if int8 else {})}))
        return 0
    split_name = "all images" if args.data else (f"validation folder {record['val_data']}" if record.get("val_data")
                                                 else f"validation split ({record['val_fraction']:.0%}, seed "
                                                      f"{record['seed']})")
    print(f"{args.checkpoint}: {origin} on {args.data or record['source']}, {split_name}: {res.count} images")
    print(f"top-1 {res.top1:.4f}   " + (f"top-5 {top5:.4f}   " if top5 is not None else "") + f"loss {res.loss:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for line in confusion_lines(names, res.confusion.tolist()):
        print(line)
    if int8:
        print(f"int8 ({int8['path']}): top-1 {int8['top1_candidate']:.4f} (fp32 {int8['top1_reference']:.4f}: "
              f"{-int8['top1_drop_points']:+.2f} points), the same top-1 as fp32 on {100 * int8['top1_agreement']:.2f}% "
              f"of the images, probabilities changed by at most {int8['max_prob_drift']:.4f} (mean "
              f"{int8['mean_prob_drift']:.1e})")
    return 0


def _int8(args, model, loader) -> dict:
    """The int8 form of the model against the model itself, on the same loader (CPU)."""
    from ..quantize import compare_predictions, quantize_int8, quantize_onnx_int8
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            quantized, _, _ = _onnx_module(str(quantize_onnx_int8(args.checkpoint, Path(tmp) / "int8.onnx")))
            return {"path": "onnxruntime dynamic quantisation", **compare_predictions(model, quantized, loader)}
    model = model.cpu().eval()
    return {"path": "PyTorch dynamic quantisation", **compare_predictions(model, quantize_int8(model), loader)}
