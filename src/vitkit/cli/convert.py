"""`vitkit convert`: move a checkpoint between dialects and show that the numbers survived."""
from __future__ import annotations

from ..weights.convert import TARGETS, convert
from .train import parse_opts


def add_parser(sub, name):
    p = sub.add_parser(name, help="convert a checkpoint (timm, Hugging Face, torchvision, JAX, vitkit) to another",
                       description="Read SRC in any dialect vitkit knows (a vitkit checkpoint, a Hugging Face "
                                   "folder, a JAX .npz, a torchvision or timm state dict), write it to DST as a "
                                   "vitkit checkpoint, a timm state dict or a Hugging Face folder, then compare "
                                   "DST's logits with the source library's own model on a fixed random batch.")
    p.add_argument("src", help="checkpoint file or Hugging Face folder")
    p.add_argument("dst", help="output file (vitkit, timm: .safetensors) or folder (hf)")
    p.add_argument("--to", choices=TARGETS, default="vitkit", help="dialect to write (default: vitkit)")
    p.add_argument("--name", help="architecture name; needed for plain timm/torchvision state dicts")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option the source does not record, e.g. --opt depth=2 (repeatable)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle file that needs arbitrary code to load (only for files you trust)")
    p.add_argument("--no-check", action="store_true", help="skip the numerical check")


def run(args) -> int:
    report = convert(args.src, args.dst, to=args.to, name=args.name, overrides=parse_opts(args.opt),
                     trust_pickle=args.trust_pickle, check=not args.no_check)
    print(f"{args.src} ({report.source}) → {report.dst} ({report.target}): {report.model_name}")
    if report.max_abs_diff is None:
        print(f"numerical check: {report.reference}")
    else:
        print(f"numerical check against {report.reference}: max |Δlogit| = {report.max_abs_diff:.3g}")
    return 0
