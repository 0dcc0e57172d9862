"""The `vitkit` command: a thin layer over the library, one module per subcommand.

Only the module of the command being run is imported (torch and the models take seconds to import), so
`vitkit --help` answers at once. Every error a command ends in is shown as one line (cli/errors.py);
`--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

# command → (module in this package, the one line `vitkit --help` shows)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list the models and their parameter counts"),
    "train": ("train", "train a model (default: a small ViT on the built-in digits)"),
    "eval": ("evaluate", "evaluate a checkpoint (top-1, top-5, loss, confusion matrix)"),
    "predict": ("predict", "classify images with a checkpoint or an exported .onnx file"),
    "data": ("data", "list the embedded data sets or export one as image files"),
    "convert": ("convert", "convert a checkpoint (timm, Hugging Face, torchvision, JAX, vitkit) to another"),
    "export": ("export", "export a checkpoint to ONNX, checked against PyTorch with onnxruntime"),
    "cost": ("cost", "parameters, FLOPs and attention memory of a model"),
    "explain": ("explain", "attention maps and embedding figures, with an HTML report"),
    "bench": ("bench", "images/s and peak memory for inference and a training step"),
    "decode": ("decode", "decode sequences from standard input with a seq2seq checkpoint"),
    "caption": ("caption", "caption images with a captioning checkpoint (greedy or beam search)"),
    "study": ("study", "reproduce one of the lectures' claims: figures, a report and a verdict"),
}

DESCRIPTION = """\
vitkit: train, evaluate and use Vision Transformers.

Start here:
  vitkit models                     list the models and their sizes
  vitkit train                      train a small ViT on the built-in digits (about 2 minutes on a laptop CPU)
  vitkit predict runs/NAME/best.safetensors IMAGE.png
Run `vitkit COMMAND --help` for each command's options."""

DEBUG_HELP = "on an error, show the Python traceback instead of the one-line message"


def command_module(command: str) -> ModuleType:
    """The module that implements `command` (imported now)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")


def build_parser(only: str | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The parser with every command's options (full), or with only `only`'s (the others then get a
    one-line stub, enough for `vitkit --help`)."""
    parser = argparse.ArgumentParser(prog="vitkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        if name == only or (only is None and full):
            command_module(name).add_parser(sub, name)
            p = sub.choices[name]
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        else:
            sub.add_parser(name, help=summary)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command named on the command line: the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv), full=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return command_module(args.command).run(args) or 0
    except KeyboardInterrupt:
        print(f"\nvitkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vitkit models | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if args.debug:
            raise
        from .errors import describe
        print(f"vitkit {args.command}: error: {describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
