"""What every checkpoint dialect (Hugging Face, torchvision, the JAX release, timm) is read into.

A dialect module exposes two functions:

    detect(path: Path) -> bool
        Cheap: is this file or folder in my dialect? (Looks at names and headers, not at tensors.)
    read(path: Path, name: str | None = None, *, trust_pickle: bool = False) -> Converted
        The weights renamed to vitkit's (= timm's) keys, and the registered model they fit.

`vitkit.load_pretrained` picks the dialect, builds the model and loads the weights strictly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Converted:
    model_name: str                      # a registered vitkit model name, e.g. 'vit_base_patch16_224'
    state: dict[str, Tensor]             # weights under vitkit's (= timm's) state-dict keys
    overrides: dict = field(default_factory=dict)   # create_model options the weights need (num_classes, img_size, ...)
    classes: list[str] | None = None     # label names when the source has them (e.g. Hugging Face id2label)
    source: str = ""                     # the dialect: 'vitkit', 'timm', 'hf', 'torchvision', 'jax'
