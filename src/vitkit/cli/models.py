"""`vitkit models`: the registered models with their parameter counts."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator


def add_parser(sub, name):
    p = sub.add_parser(name, help="list the models and their parameter counts",
                       description="List registered models (named as in timm) with parameter counts, "
                                   "counted with a 1000-class head unless the model says otherwise.")
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'vit_base*' (default: all)")
    p.add_argument("--family", help="only this family, e.g. vit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


_INIT_FUNCTIONS = ("trunc_normal_", "normal_", "uniform_", "zeros_", "ones_", "constant_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "eye_")


@contextmanager
def _no_init() -> Iterator[None]:
    """torch.nn.init's functions do nothing inside: on the meta device they are most of the time a model takes to
    build (1.3 of 1.8 s for every registered model), and a parameter count does not depend on them."""
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def count_parameters(name: str) -> int:
    """Parameters of a registered model, built on the meta device without initialisation: shapes only."""
    import torch

    from ..registry import create_model
    with torch.device("meta"), _no_init():
        return sum(p.numel() for p in create_model(name).parameters())


def run(args) -> int:
    from ..registry import get_entry, list_models

    rows = []
    for name in list_models(args.pattern, family=args.family):
        entry, cfg = get_entry(name), get_entry(name).config
        rows.append({"name": name, "family": entry.family, "params": count_parameters(name), "inputs": entry.inputs,
                     "img_size": getattr(cfg, "img_size", None),
                     "num_classes": getattr(cfg, "num_classes", getattr(cfg, "tgt_vocab", getattr(cfg, "vocab", None)))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 1
    width, fam = max(len(r["name"]) for r in rows), max(6, *(len(r["family"]) for r in rows))
    print(f"{'model':<{width}}  {'family':<{fam}}  {'params':>13}  {'input':>7}  classes")
    for r in rows:
        size = r["img_size"] if isinstance(r["img_size"], int) else "×".join(map(str, r["img_size"] or ())) \
            if "image" in r["inputs"] else r["inputs"]
        print(f"{r['name']:<{width}}  {r['family']:<{fam}}  {r['params']:>13,}  {size:>7}  {r['num_classes']}")
    return 0
