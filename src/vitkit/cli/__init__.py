"""The `vitkit` command: a thin layer over the library, one module per subcommand."""
from __future__ import annotations

import argparse
import os
import sys

from . import bench, convert, cost, data, evaluate, explain, export, models, predict, train

COMMANDS = {"models": models, "train": train, "eval": evaluate, "predict": predict, "data": data,
            "convert": convert, "export": export, "cost": cost, "explain": explain, "bench": bench}

DESCRIPTION = """\
vitkit: train, evaluate and use Vision Transformers.

Start here:
  vitkit models                     list the models and their sizes
  vitkit train                      train a small ViT on the built-in digits (about 2 minutes on a laptop CPU)
  vitkit predict runs/NAME/best.safetensors IMAGE.png
Run `vitkit COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        # Library errors are written for people: show the message, not a traceback.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vitkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nvitkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vitkit models | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
