"""Shared test set-up: a torchvision stand-in for timm, a fixed seed per test, and small helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# timm is our reference implementation, and it imports torchvision at module level. torchvision's
# wheels need CUDA libraries and fail to import with the CPU build of torch this project pins, so
# when (and only when) the real torchvision cannot be imported we put tests/timm_shim first on
# sys.path: it provides the few names timm imports and raises if any of them is used. A working
# torchvision is never masked.
_SHIM = Path(__file__).resolve().parent / "timm_shim"
try:
    import torchvision  # noqa: F401
except Exception:  # not installed (ImportError), or installed but broken (OSError, RuntimeError, ...)
    for _name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[_name]  # drop what a half-finished import left behind
    if str(_SHIM) not in sys.path:
        sys.path.insert(0, str(_SHIM))


# Under pytest-xdist each worker gets its share of the cores: two workers with two torch threads each
# on a 2-core machine only contend (measured: one model file 43 s → 20 s).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it on its worker."""
    torch.manual_seed(0)


@pytest.fixture
def timm():
    """The timm module, or a skip where it is not installed."""
    return pytest.importorskip("timm")


@pytest.fixture(scope="session")
def transformers():
    """The transformers module, or a skip where it is not installed.

    It is first imported with the torchvision stand-in out of sight: transformers would take the stand-in for
    torchvision and import parts of it that it does not have. transformers caches that check
    (is_torchvision_available), so it stays "no torchvision" after the stand-in is back for timm.
    """
    hidden = {n: sys.modules.pop(n) for n in list(sys.modules) if n == "torchvision" or n.startswith("torchvision.")}
    shim = [p for p in sys.path if p == str(_SHIM)]
    for p in shim:
        sys.path.remove(p)
    try:
        module = pytest.importorskip("transformers")
        from transformers.utils.import_utils import is_torchvision_available
        is_torchvision_available()
    finally:
        sys.path[:0] = shim
        sys.modules.update(hidden)
    return module


# A ViT small enough that any test can build and run it in milliseconds on a CPU.
TINY_VIT = dict(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3)


@pytest.fixture
def tiny_vit():
    """Overrides that shrink any registered ViT to TINY_VIT; a fresh dict, so tests may edit it."""
    return dict(TINY_VIT)


@pytest.fixture
def images():
    """images(b, c, h, w=h): a random batch shaped (B, C, H, W)."""
    def make(b: int = 2, c: int = 3, h: int = 32, w: int | None = None) -> torch.Tensor:
        return torch.randn(b, c, h, h if w is None else w)
    return make
