"""Reading and writing weight files safely.

- safetensors is the default and never runs code.
- Pickle-based files (.pth, .pt, .bin, .ckpt) are read with `torch.load(weights_only=True)`, which
  accepts tensors and plain containers only. A file that needs arbitrary code to unpickle is
  refused unless the caller passes `trust_pickle=True`.
- Writes are atomic: a temporary file in the same folder, fsync, then `os.replace`, so a crash
  never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A weight file that cannot be read, or that does not fit the model it is loaded into."""


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path), then move the finished file onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files 0600; a finished file gets the user's umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (made contiguous, shared storage broken) atomically."""
    tensors = {k: v.detach().contiguous().clone() if _shares_storage(v, tensors) else v.detach().contiguous()
               for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _shares_storage(t: Tensor, tensors: dict[str, Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(o.untyped_storage().data_ptr() == ptr for o in tensors.values()) > 1


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with a clear error for a bad file."""
    path = Path(path)
    _must_exist(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated or "
                              f"corrupt: write or download it again") from e


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A flat {name: tensor} state dict from a safetensors or PyTorch pickle file.

    Containers that hold the weights under 'state_dict', 'model' or 'module' are unwrapped.
    """
    path = Path(path)
    _must_exist(path)
    if _is_safetensors(path):
        return read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise CheckpointError(
                f"{path} needs arbitrary Python code to unpickle, so vitkit refused to load it (loading it could run "
                f"any code the file's author chose). If you trust its source, pass trust_pickle=True "
                f"(--trust-pickle on the command line); better, convert it once to safetensors.\n  detail: {e}") from e
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}); it may be "
                              f"truncated or corrupt: write or download it again") from e
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "module", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:  # 8-byte header length, then a JSON header starting with '{'
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the weights file inside it")


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint",
                     ignore_missing: list[str] | tuple[str, ...] = ()) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key, or return.
    ignore_missing: keys the caller leaves out on purpose (a freshly initialised head)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in ignore_missing]  # model order: top level first
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or misshaped):
        return
    name = getattr(model, "model_name", type(model).__name__)
    lines = [f"{source} does not fit {name}:"]

    def show(title, keys, fmt=str):
        if keys:
            lines.append(f"  {len(keys)} {title}: " + ", ".join(fmt(k) for k in keys[:8]) + (" …" if len(keys) > 8 else ""))

    show("missing key(s)", missing)
    show("unexpected key(s)", unexpected)
    show("key(s) with the wrong shape", misshaped,
         lambda k: f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})")
    if missing or unexpected:
        lines.append("  the checkpoint is probably for another architecture; check the model name it was saved from")
    elif all(k.startswith("head") for k in misshaped):
        lines.append("  only the classifier differs: load with the checkpoint's num_classes, then reset_classifier()")
    elif all("pos_embed" in k or "relative_position" in k for k in misshaped):
        lines.append("  only position tables differ: the checkpoint is for another image size; build the model at that "
                     "size or resample the position embeddings (vitkit.layers.resample_abs_pos_embed)")
    else:
        lines.append("  the checkpoint is probably for another size (width or depth) of this architecture")
    raise CheckpointError("\n".join(lines))


def load_weights_into(model: nn.Module, path: str | Path, *, trust_pickle: bool = False) -> nn.Module:
    """Load a weights file strictly into `model`; a vitkit checkpoint's model tensors are picked out."""
    state = read_state_dict(path, trust_pickle=trust_pickle)
    if any(k.startswith("model.") for k in state) and not any(k.startswith("model.") for k in model.state_dict()):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    return model


def to_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
