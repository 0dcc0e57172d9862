"""Model families, one module each. Importing this package imports every module in it, and each
module registers its models under their timm names: adding a family is adding a file."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .vit import VisionTransformer, ViTConfig, vit_config  # noqa: E402

__all__ = ["VisionTransformer", "ViTConfig", "vit_config"]
