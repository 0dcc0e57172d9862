"""Model families. Importing this package registers every model under its timm name."""
from . import vit  # noqa: F401
from .vit import VisionTransformer, ViTConfig, vit_config

__all__ = ["VisionTransformer", "ViTConfig", "vit_config"]
