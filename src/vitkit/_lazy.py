"""Package attributes imported on first use (PEP 562), so that importing a package stays cheap."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_attributes(package: str, where: dict[str, str]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package`: name → the submodule (relative to it) that defines it."""
    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *where])

    return __getattr__, __dir__
