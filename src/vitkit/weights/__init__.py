"""Weight files: safe reading and atomic writing, vitkit checkpoints, and (later) other libraries' formats."""
from .checkpoint import Checkpoint, is_vitkit_checkpoint, load_checkpoint, save_checkpoint
from .io import (CheckpointError, atomic_write, check_state_dict, load_weights_into, read_safetensors,
                 read_state_dict, save_safetensors)

__all__ = ["Checkpoint", "CheckpointError", "atomic_write", "check_state_dict", "is_vitkit_checkpoint",
           "load_checkpoint", "load_weights_into", "read_safetensors", "read_state_dict", "save_checkpoint",
           "save_safetensors"]
