"""vitkit: attention, Transformers and Vision Transformers, correct to the papers and equal to timm."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562): `import vitkit` stays cheap, so `vitkit --help` need not
# wait for torch.
_LAZY = {"create_model": "registry", "get_entry": "registry", "list_models": "registry",
         "model_config": "registry", "load_pretrained": "weights.pretrained"}

if TYPE_CHECKING:
    from .registry import create_model, get_entry, list_models, model_config
    from .weights.pretrained import load_pretrained


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["create_model", "get_entry", "list_models", "load_pretrained", "model_config", "__version__"]
