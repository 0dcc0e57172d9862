"""`vitkit train`: options are generated from TrainConfig, so the two never disagree."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import typing

from ..train import TrainConfig, train

EXAMPLES = """\
examples:
  vitkit train                                   small ViT on the built-in 8×8 digits (the default)
  vitkit train --data mnist --model vit_pico_patch4_28 --epochs 20
  vitkit train --data path/to/folder --model vit_tiny_patch16_224 --img-size 64 --hflip 0.5
  vitkit train --name demo --resume               continue an interrupted run exactly
  vitkit train --opt depth=4 --opt embed_dim=96   change the model's own options
A run writes runs/NAME/{last,best}.safetensors, metrics.jsonl and metrics.png."""


def _field_help() -> dict[str, str]:
    """The comment beside each TrainConfig field, read from its source: one description, two uses."""
    source = inspect.getsource(TrainConfig)
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", source, re.M)}


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a model (default: a small ViT on the built-in digits)",
                       description="Train a model. With no options: vit_pico_patch2_8 on scikit-learn's 1,797 "
                                   "8×8 digits, holding out 20% for validation.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = _field_help()
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(flag, type=_parser_for(hints[f.name]), default=default, help=text,
                           metavar=f.name.upper())
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option passed to create_model, e.g. --opt depth=4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint, exactly")
    p.add_argument("--overwrite", action="store_true", help="start runs/NAME again, replacing what is there")


def _parser_for(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint

    def parse(text: str):
        if text.lower() == "none" and type(None) in typing.get_args(hint):
            return None
        return base(text)
    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def parse_opts(opts: list[str]) -> dict:
    out = {}
    for item in opts:
        if "=" not in item:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run(args) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model_overrides"}
    cfg = TrainConfig(**values, model_overrides=parse_opts(args.opt))
    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0
