"""vitkit: attention, Transformers and Vision Transformers, correct to the papers and equal to timm."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562): `import vitkit` stays cheap, so `vitkit --help` need not
# wait for torch.
_LAZY = {"create_model": "registry", "get_entry": "registry", "list_models": "registry",
         "model_config": "registry", "load_pretrained": "weights.pretrained"}

if TYPE_CHECKING:
    from .registry import create_model, get_entry, list_models, model_config
    from .weights.pretrained import load_pretrained


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = ["create_model", "get_entry", "list_models", "load_pretrained", "model_config", "__version__"]
