"""preprocessor_config.json for a Hugging Face folder vitkit writes, so that
`transformers.AutoImageProcessor.from_pretrained(folder)` prepares images as vitkit's evaluation does.

vitkit evaluates with: resize the short side to img_size / crop_pct (aspect kept, bilinear, antialiased), cut the
centre img_size, scale to [0, 1], normalise with mean/std (train/image_data.py EvalTransform). transformers'
BitImageProcessor does the same steps: `size.shortest_edge`, `crop_size`, `rescale_factor` 1/255, image_mean/std;
PIL's bilinear resize antialiases too. For a square img_size the two agree to resampling rounding; for a
non-square one the short side is resized to cover the larger of the two sides, slightly more than vitkit's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .io import atomic_write

FILE = "preprocessor_config.json"
_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR


def preprocessor_config(img_size: tuple[int, int], mean: list[float], std: list[float], crop_pct: float = 1.0,
                        in_chans: int = 3) -> dict:
    """The BitImageProcessor settings of vitkit's evaluation transform (see the module docstring)."""
    h, w = img_size
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std need one value per channel ({in_chans}), got {len(mean)} and {len(std)}")
    return {"image_processor_type": "BitImageProcessor", "do_resize": True,
            "size": {"shortest_edge": math.floor(max(h, w) / crop_pct)}, "resample": _BILINEAR,
            "do_center_crop": True, "crop_size": {"height": h, "width": w}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [float(m) for m in mean],
            "image_std": [float(s) for s in std], "do_convert_rgb": in_chans == 3}


def write_preprocessor_config(folder: str | Path, **settings) -> Path:
    """Write FILE into `folder` (atomically) from `preprocessor_config(**settings)`; returns its path."""
    path = Path(folder) / FILE
    text = json.dumps(preprocessor_config(**settings), indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def evaluation_settings(src: str | Path, source: str, model) -> dict:
    """preprocessor_config's settings for weights read from `src` (dialect `source`) into `model`: a vitkit
    checkpoint's data record (its mean, std, crop_pct), else the registered model's normalisation, no crop."""
    from ..registry import get_entry

    cfg = model.cfg
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else tuple(cfg.img_size)
    entry = get_entry(model.model_name)
    data: dict = {}
    if source == "vitkit":
        from safetensors import safe_open
        with safe_open(str(src), "pt") as f:  # the header only
            data = json.loads((f.metadata() or {}).get("data") or "{}")
    c = cfg.in_chans
    mean, std = data.get("mean") or list(entry.mean), data.get("std") or list(entry.std)
    if len(mean) != c or len(std) != c:  # as training does
        mean, std = [0.5] * c, [0.5] * c
    return {"img_size": (h, w), "mean": mean, "std": std, "crop_pct": data.get("crop_pct") or 1.0, "in_chans": c}
