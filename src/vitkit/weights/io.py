"""Reading and writing weight files safely.

- safetensors is the default and never runs code.
- Pickle-based files (.pth, .pt, .bin, .ckpt) are read with `torch.load(weights_only=True)`, which
  accepts tensors and plain containers only. A file that needs arbitrary code to unpickle is
  refused unless the caller passes `trust_pickle=True`; a file whose bytes are merely damaged is
  told apart from it (weights.pickles) and reported as damaged, with no advice to trust it.
- A safetensors file vitkit wrote with a checksum in its header (every vitkit checkpoint since
  checksums) is verified on reading: a changed byte is an error that names the file.
- What a file holds is checked before it is used (check_state_dict): names and shapes against the
  model, floating-point values where the model has floats, and no NaN or infinity in the weights.
- Writes are atomic: a temporary file in the same folder, fsync, then `os.replace`, so a crash
  never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from ..errors import VitkitError
from .pickles import diagnose


class CheckpointError(VitkitError):
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


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading its tensors."""
    path = Path(path)
    _must_exist(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(_unreadable(path, e)) from e


def read_safetensors(path: str | Path, *, verify: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with a clear error for a bad file. verify: check the
    header's checksum, where it has one (verify_checksum); False leaves that to the caller."""
    path = Path(path)
    _must_exist(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(_unreadable(path, e)) from e
    if verify:
        verify_checksum(path, tensors, metadata)
    return tensors, metadata


def _unreadable(path: Path, e: Exception) -> str:
    return f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt: write or download it again"


CHECKSUM = "checksum"  # the header entry


def checksum(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """'sha256:<hex>' of every header entry but the checksum itself, then every tensor's name, dtype, shape and
    bytes, in sorted order: what vitkit checkpoints record, and reading verifies."""
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != CHECKSUM):
        digest.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
    return f"sha256:{digest.hexdigest()}"


def verify_checksum(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """A CheckpointError naming `path` if its header has a checksum that its contents do not match. Files
    without one (written before vitkit wrote checksums, or by other tools) are not checked."""
    if CHECKSUM in metadata and metadata[CHECKSUM] != checksum(tensors, metadata):
        raise CheckpointError(f"{path} does not match the checksum in its header: its contents changed after vitkit "
                              f"wrote it (damaged on disk or in transfer, or edited); write or download it again")


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A flat {name: tensor} state dict from a safetensors or PyTorch pickle file.

    Containers that hold the weights under 'state_dict', 'model' or 'module' are unwrapped.
    """
    path = Path(path)
    _must_exist(path)
    if _is_safetensors(path):
        return read_safetensors(path)[0]
    return _unwrap(_load_pickle(path, trust_pickle), path)


def _load_pickle(path: Path, trust_pickle: bool):
    """torch.load with weights_only=True; on refusal, tell a damaged file from one that needs code (see pickles)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = e
    except Exception as e:  # on damaged bytes torch.load raises RuntimeError, EOFError, struct.error, KeyError, ...
        raise CheckpointError(_damaged(path, e)) from e
    verdict = diagnose(path)
    if verdict.damaged:
        raise CheckpointError(_damaged(path, refused)) from refused
    if verdict.missing:
        raise CheckpointError(
            f"{path} is a pickled Python object, not a plain state dict: unpickling it needs code that is not "
            f"installed here ({_some(verdict.missing)}, from {', '.join(_top_modules(verdict.missing))}: a package "
            f"you do not have, or the script that saved it), so it cannot be loaded. Ask its author for the weights "
            f"alone (torch.save(model.state_dict(), ...)) or a safetensors file")
    if not trust_pickle:
        raise CheckpointError(
            f"{path} needs arbitrary Python code to unpickle ({_some(verdict.code)}), so vitkit refused to load it "
            f"(loading it could run any code the file's author chose). If you trust its source, pass "
            f"trust_pickle=True (--trust-pickle on the command line); better, convert it once to safetensors")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # the code it names ran and failed, or the bytes after those names are damaged
        raise CheckpointError(f"{path} could not be unpickled even as trusted code ({_gist(e)}); it is damaged, "
                              f"or needs other versions of the code it names "
                              f"({_some(verdict.code)})") from e


def _damaged(path: Path, e: Exception) -> str:
    return (f"{path} could not be read as a PyTorch checkpoint ({_gist(e)}): its bytes "
            f"are damaged (truncated or corrupt), or it is not a file torch.save wrote; write or download it again")


def _gist(e: Exception) -> str:
    """'Type: first line' of an exception; torch's weights-only refusals end in the one line that matters, after
    advice (weights_only=False) that must not reach a user whose file is damaged."""
    text = str(e).rsplit("WeightsUnpickler error:", 1)[-1].strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _top_modules(names: list[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names})


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "module", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found a {type(obj).__name__}); pass "
                              f"a file written by torch.save(model.state_dict(), ...)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        some = ", ".join(f"{k!r} ({type(obj[k]).__name__})" for k in bad[:5])
        raise CheckpointError(f"{path} does not hold a state dict of tensors: {len(bad)} of its {len(obj)} entries "
                              f"are not a tensor under a name: {some}; pass a file written by "
                              f"torch.save(model.state_dict(), ...)")
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
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key, every tensor of another
    kind than the model's (integers where the model has floats: load_state_dict would cast them silently) and
    every weight holding NaN or infinity; or return. `model` may be on the meta device.
    ignore_missing: keys the caller leaves out on purpose (a freshly initialised head)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in ignore_missing]  # model order: top level first
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    retyped = [k for k in expected if k in state and _kind(state[k]) != _kind(expected[k])]
    weights = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    nonfinite = [k for k in expected if k in state and k not in retyped and _nonfinite(state[k])
                 and (k in weights or k.endswith(("running_mean", "running_var")))]
    if not (missing or unexpected or misshaped or retyped or nonfinite):
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
    show("key(s) of another kind than the model's", retyped,
         lambda k: f"{k} (checkpoint {_dtype(state[k])}, model {_dtype(expected[k])})")
    show("weight(s) with NaN or infinite values", nonfinite, lambda k: f"{k} ({_count_nonfinite(state[k])})")
    if retyped:
        lines.append("  load_state_dict would cast those values silently (small weights stored as integers become 0, "
                     "and the model gives every class the same score); the file is damaged or holds something "
                     "else, such as quantised weights: save the float weights")
    if nonfinite:
        lines.append("  the model would output NaN: the weights come from a diverged training run or a damaged file; "
                     "use an earlier checkpoint")
    if missing or unexpected:
        lines.append("  the checkpoint is probably for another architecture; check the model name it was saved from")
    elif misshaped and all(k.startswith("head") for k in misshaped):
        lines.append("  only the classifier differs: load with the checkpoint's num_classes, then reset_classifier()")
    elif misshaped and all("pos_embed" in k or "relative_position" in k for k in misshaped):
        lines.append("  only position tables differ: the checkpoint is for another image size; build the model at that "
                     "size or resample the position embeddings (vitkit.layers.resample_abs_pos_embed)")
    elif misshaped:
        lines.append("  the checkpoint is probably for another size (width or depth) of this architecture")
    raise CheckpointError("\n".join(lines))


def _kind(t: Tensor) -> str:
    return "bool" if t.dtype == torch.bool else "complex" if t.is_complex() else \
        "float" if t.is_floating_point() else "integer"


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _nonfinite(t: Tensor) -> bool:
    """Whether `t` holds NaN or ±inf. A finite sum proves it does not (NaN and inf propagate), at a tenth of the
    cost of testing every element, which is done only when the sum is not finite (or overflowed)."""
    if not t.is_floating_point() or t.device.type == "meta":
        return False
    total = t.sum(dtype=torch.float32 if t.element_size() < 4 else None)
    return not bool(torch.isfinite(total)) and not bool(torch.isfinite(t).all())


def _count_nonfinite(t: Tensor) -> str:
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if p)


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
