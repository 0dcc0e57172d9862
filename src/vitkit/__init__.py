"""vitkit: attention, Transformers and Vision Transformers, correct to the papers and equal to timm."""
from .registry import create_model, get_entry, list_models, model_config

__version__ = "0.1.0"
__all__ = ["create_model", "get_entry", "list_models", "model_config", "__version__"]
