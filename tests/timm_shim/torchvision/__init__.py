"""A test-only stand-in for torchvision, so that timm (our reference implementation) imports.

torchvision's PyPI wheels need CUDA libraries and fail to import with the CPU build of torch
this project pins, yet timm imports a few torchvision names at module level (transforms,
datasets, FrozenBatchNorm2d) that the model code we compare against never calls. This package
provides those names; anything that is *used* raises. tests/conftest.py puts it on sys.path
only when the real torchvision cannot be imported. vitkit itself never imports torchvision.
"""
__version__ = "0.0.0+vitkit-test-shim"


class Unavailable:
    """Placeholder for a torchvision callable that timm imports but our tests never use."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} comes from vitkit's test stand-in for torchvision, "
                           "which does not implement it")


def unavailable(module: str, name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (Unavailable,), {"__module__": module})
