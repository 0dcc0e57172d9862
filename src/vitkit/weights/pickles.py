"""Why a PyTorch pickle failed to load safely: it names code to run, or its bytes are damaged.

`torch.load(weights_only=True)` raises the same `UnpicklingError` for both, so a message built on it alone would
tell the owner of a merely corrupt file to turn on code execution (`trust_pickle=True`), which cannot help. This
module reads the pickle's opcodes statically (pickletools; nothing is imported or executed) and sorts the file:

    damaged    the opcodes do not parse, or every name they reference is one torch's safe loader accepts
               (so the failure came from the bytes), or a referenced name is not a Python name, or is one
               character away from an accepted one (a flipped byte in 'torch._utils._rebuild_tensor_v2')
    missing    it names code from modules that are not installed here: even trusted, it cannot load
    code       it names functions or classes outside torch's allow-list that exist here: loading it runs them

Files are torch's zip format (the pickle is the archive's data.pkl) or its legacy format (consecutive pickles).
"""
from __future__ import annotations

import difflib
import importlib.util
import io
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, storage keys; raw tensor bytes follow
UNTRACED = "(a name assembled on the pickle's stack)"  # a STACK_GLOBAL whose strings this reader did not follow


@dataclass
class PickleVerdict:
    damaged: bool
    code: list[str] = field(default_factory=list)     # names outside torch's allow-list that exist here
    missing: list[str] = field(default_factory=list)  # names whose top-level module is not installed


def diagnose(path: Path) -> PickleVerdict:
    """Sort a pickle that torch's safe loader refused (see the module docstring)."""
    try:
        names = _referenced_names(path)
    except Exception:  # any way the bytes fail to parse means the same thing: they are damaged
        return PickleVerdict(damaged=True)
    allowed = _allowed()
    outside = sorted(names - allowed - {UNTRACED})
    if not (outside or UNTRACED in names) or any(
            not _NAME.match(n) or difflib.get_close_matches(n, allowed, n=1, cutoff=0.9) for n in outside):
        return PickleVerdict(damaged=True)
    missing = [n for n in outside if not _installed(n.split(".")[0])]
    code = [n for n in outside if n not in missing] + ([UNTRACED] if UNTRACED in names else [])
    return PickleVerdict(damaged=False, code=code, missing=missing)


def _installed(module: str) -> bool:
    """Whether a top-level module could be imported here (found, not imported). '__main__' is the script that
    saved the file, never this one."""
    if module == "__main__":
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _allowed() -> set[str]:
    """The names torch.load(weights_only=True) accepts: its defaults and any the user added (torch is pinned)."""
    from torch import _weights_only_unpickler as safe
    return set(safe._get_allowed_globals()) | set(safe._get_user_allowed_globals())


def _referenced_names(path: Path) -> set[str]:
    """The names in the archive's data.pkl (zip format), or in the leading pickles of a legacy file (read as a
    stream: the tensor bytes after them are never read)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickle_name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            data = archive.read(pickle_name)
        return _names_in(io.BytesIO(data), len(data), pickles=1)
    with open(path, "rb") as f:
        return _names_in(f, path.stat().st_size, pickles=_LEGACY_PICKLES)


def _names_in(stream: BinaryIO, size: int, pickles: int) -> set[str]:
    """Every 'module.name' the first `pickles` pickles in `stream` reference (GLOBAL, INST, STACK_GLOBAL)."""
    names: set[str] = set()
    for _ in range(pickles):
        if stream.tell() >= size:
            break
        strings: list[str | None] = []  # recent string pushes: STACK_GLOBAL takes the module and name from them
        memo: dict[int, str | None] = {}
        for op, arg, _pos in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                names.add(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                module, name = (strings[-2:] if len(strings) >= 2 else [None, None])
                names.add(f"{module}.{name}" if module and name else UNTRACED)
            elif op.name in _STRINGS:
                strings.append(arg if isinstance(arg, str) else None)
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)))
            else:
                strings.append(None)
    return names
