"""vitkit: attention, Transformers and Vision Transformers, correct to the papers and equal to timm."""
__version__ = "0.1.0"

from .registry import create_model, get_entry, list_models, model_config  # noqa: E402
from .weights.pretrained import load_pretrained  # noqa: E402

__all__ = ["create_model", "get_entry", "list_models", "load_pretrained", "model_config", "__version__"]
