"""DeiT's training augmentation on tensors: random resized crop, RandAugment, random erasing, Mixup/CutMix.

Every random draw is taken from an explicit CPU torch.Generator passed as `generator=`: never the global
torch RNG, python's `random` or numpy. A run is then a pure function of its seed, and dropout's draws
(global RNG) do not shift the augmentation's. `rng(seed, epoch, step, sample)` makes one generator per key.

Images are floats in [0, 1] with 1 or 3 channels. Per-sample ops take one image (C, H, W); batch ops
take (B, C, H, W). The algorithms follow torchvision's RandomResizedCrop and timm's RandAugment
('rand-m9-mstd0.5-inc1'), RandomErasing and Mixup ('batch' mode); the code is our own.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.patch_embed import to_2tuple

__all__ = [
    "RAND_INCREASING_OPS", "RandAugment", "hflip", "mix_batch", "rand_augment_op", "random_erasing",
    "random_resized_crop", "random_resized_crop_box", "resize_center_crop", "rng", "rng_seed",
    "soft_target_cross_entropy",
]

Size = Union[int, tuple[int, int]]

# ---------------------------------------------------------------------------------------------------------------
# Seeded generators and the draws taken from them


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of splitmix64 (Steele, Lea & Flood 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rng_seed(*keys: int) -> int:
    """The seed in [0, 2**63) that rng(*keys) uses: splitmix64 folded over the keys, order-sensitive."""
    h = 0
    for k in keys:
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"rng: keys must be integers (seed, epoch, step, ...) but got {k!r} of type "
                            f"{type(k).__name__}; pass int(...) of it") from None
        h = _splitmix64(h ^ (k & _MASK64))  # negative keys wrap as two's complement
    return h >> 1


def rng(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, e.g. rng(seed, epoch, step, micro, sample).

    Distinct tuples give independent streams ((0, 1) and (1, 0) differ), and the seed is stable across
    runs, machines and versions: it is rng_seed(*keys), plain integer arithmetic.
    """
    return torch.Generator(device="cpu").manual_seed(rng_seed(*keys))


def _check_generator(generator, fn: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator but got {type(generator).__name__}; pass "
                        f"generator=rng(seed, epoch, step, sample) so the draw is reproducible")
    if generator.device.type != "cpu":
        raise ValueError(f"{fn}: generator is on {generator.device} but draws are taken on the CPU; "
                         f"pass a CPU generator, e.g. rng(seed, ...)")
    return generator


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """An integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (), generator=g))


def _check_image(img: Tensor, fn: str) -> tuple[int, int, int]:
    if not isinstance(img, Tensor) or img.ndim != 3:
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"{fn} takes one image (C, H, W) but got {shape}; for a batch, call it once per "
                         f"sample, each with its own generator rng(seed, epoch, step, sample)")
    if not img.is_floating_point():
        raise TypeError(f"{fn}: the image is {img.dtype} but a float image in [0, 1] is expected; "
                        f"convert with img.float() / 255")
    return tuple(img.shape)


def _check_range(name: str, pair: tuple[float, float], fn: str, low: float = 0.0) -> tuple[float, float]:
    lo, hi = float(pair[0]), float(pair[1])
    if not low <= lo <= hi:
        raise ValueError(f"{fn}: {name} must be (min, max) with {low} ≤ min ≤ max but is {pair}")
    return lo, hi


# ---------------------------------------------------------------------------------------------------------------
# Crops, resizes and flips


def _resize(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased: (C, H, W) → (C, *size); the same tensor when the size already matches."""
    if tuple(img.shape[-2:]) == size:
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def random_resized_crop_box(height: int, width: int, *, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w) in a height×width image.

    Up to 10 tries: area fraction ~ U(scale), log aspect (w/h) ~ U(log ratio); the first box that fits is
    placed uniformly. If none fits, the central crop of the whole image with its ratio clamped to `ratio`.
    """
    g = _check_generator(generator, "random_resized_crop")
    scale = _check_range("scale", scale, "random_resized_crop")
    ratio = _check_range("ratio", ratio, "random_resized_crop", low=1e-12)
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(*scale, g)
        aspect = math.exp(_uniform(*log_ratio, g))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h + 1, g), _randint(0, width - w + 1, g), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Tensor, size: Size, *, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator) -> Tensor:
    """Crop a random_resized_crop_box and resize it (bilinear, antialiased): (C, H, W) → (C, *size)."""
    _, H, W = _check_image(img, "random_resized_crop")
    top, left, h, w = random_resized_crop_box(H, W, scale=scale, ratio=ratio, generator=generator)
    return _resize(img[:, top:top + h, left:left + w], to_2tuple(size))


def resize_center_crop(img: Tensor, size: Size, *, crop_pct: float = 0.875) -> Tensor:
    """timm/DeiT evaluation: aspect-preserving resize to cover floor(size / crop_pct), then centre crop.

    For a square size the short side becomes floor(size / crop_pct) (256 for 224 at 0.875); crop_pct=1
    resizes the short side to size. No squashing. The crop offset rounds as torchvision's CenterCrop does.
    (C, H, W) → (C, *size).
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"resize_center_crop: crop_pct must be in (0, 1] but is {crop_pct}; DeiT uses 0.875, "
                         f"and 1.0 resizes the short side straight to size")
    _, H, W = _check_image(img, "resize_center_crop")
    th, tw = to_2tuple(size)
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    if sh / H >= sw / W:  # the height binds: it becomes sh, the width follows the aspect
        nh, nw = sh, max(sw, int(sh * W / H))
    else:
        nh, nw = max(sh, int(sw * H / W)), sw
    out = _resize(img, (nh, nw))
    top, left = int(round((nh - th) / 2)), int(round((nw - tw) / 2))
    return out[:, top:top + th, left:left + tw]


def hflip(img: Tensor, p: float = 0.5, *, generator: torch.Generator) -> Tensor:
    """Mirror one image (C, H, W) left↔right with probability p (one draw, always taken)."""
    _check_image(img, "hflip")
    flip = torch.rand((), generator=_check_generator(generator, "hflip")).item() < p
    return img.flip(-1) if flip else img


# ---------------------------------------------------------------------------------------------------------------
# RandAugment: the ops. Each maps a float image (C, H, W) in [0, 1] to the same; uint8-valued inputs give
# timm's PIL results (within 1/255 where PIL rounds its intermediate values to uint8).

RAND_INCREASING_OPS = (  # timm's _RAND_INCREASING_TRANSFORMS, in its order
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_FILL = 128 / 255  # timm's fill for geometric ops, (128, 128, 128)


def _auto_contrast(img: Tensor) -> Tensor:
    """Stretch each channel to [0, 1]; a constant channel is left as is."""
    lo, hi = img.amin((-2, -1), keepdim=True), img.amax((-2, -1), keepdim=True)  # (C, 1, 1)
    flat = hi <= lo
    lo, span = torch.where(flat, 0.0, lo), torch.where(flat, 1.0, hi - lo)
    return ((img - lo) / span).clamp(0, 1)


def _equalize(img: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per channel, on the image quantised to 256 levels."""
    q = (img * 255).round().clamp(0, 255).long()  # (C, H, W)
    out = []
    for c in range(q.shape[0]):
        hist = torch.bincount(q[c].flatten(), minlength=256)  # (256,)
        used = hist[hist > 0]
        step = (used.sum() - used[-1]).item() // 255 if len(used) > 1 else 0
        if step == 0:  # one level only, or too few pixels off the top level: PIL leaves it
            out.append(img[c])
            continue
        before = torch.cumsum(hist, 0) - hist  # pixels below each level, (256,)
        lut = ((step // 2 + before) // step).clamp(0, 255)
        out.append(lut[q[c]].to(img.dtype) / 255)
    return torch.stack(out)


def _posterize(img: Tensor, bits: int) -> Tensor:
    """Keep the top `bits` bits of each uint8 level; 0 bits gives black."""
    if bits >= 8:
        return img
    q = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return (q & ((0xFF << (8 - bits)) & 0xFF)).to(img.dtype) / 255


def _solarize(img: Tensor, thresh: int) -> Tensor:
    """Invert levels ≥ thresh (on the 0–255 scale); thresh 256 is identity."""
    return torch.where(img >= thresh / 255, 1 - img, img)


def _solarize_add(img: Tensor, add: int, thresh: int = 128) -> Tensor:
    """Add `add` (0–255 scale) to levels below thresh, saturating at white."""
    return torch.where(img < thresh / 255, (img + add / 255).clamp(max=1), img)


def _blend(degenerate: Tensor, img: Tensor, factor: float) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor · (img − degenerate), clipped; factor 1 is identity."""
    return (degenerate + factor * (img - degenerate)).clamp(0, 1)


def _gray(img: Tensor) -> Tensor:
    """(C, H, W) → (1, H, W) luma with PIL's 'L' weights; a 1-channel image is its own gray."""
    if img.shape[0] == 1:
        return img
    w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device)
    return (img * w[:, None, None]).sum(0, keepdim=True)


def _color(img: Tensor, factor: float) -> Tensor:
    return img if img.shape[0] == 1 else _blend(_gray(img).expand_as(img), img, factor)


def _contrast(img: Tensor, factor: float) -> Tensor:
    return _blend(_gray(img).mean().expand_as(img), img, factor)


def _brightness(img: Tensor, factor: float) -> Tensor:
    return _blend(torch.zeros_like(img), img, factor)


def _sharpness(img: Tensor, factor: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (3×3, centre 5, others 1, /13); the 1-pixel border is not smoothed."""
    C, H, W = img.shape
    if H < 3 or W < 3:
        return img
    k = torch.ones(3, 3, dtype=img.dtype, device=img.device)
    k[1, 1] = 5
    k = (k / 13).expand(C, 1, 3, 3)                             # (C, 1, 3, 3): one kernel per channel
    smooth = img.clone()
    smooth[:, 1:-1, 1:-1] = F.conv2d(img[None], k, groups=C)[0]  # (C, H-2, W-2)
    return _blend(smooth, img, factor)


def _affine(img: Tensor, m: tuple[float, ...], fill: float, mode: str) -> Tensor:
    """Resample with PIL's affine convention: output pixel (x, y) reads input (a·x + b·y + c, d·x + e·y + f).

    Coordinates are in pixels from the top-left image corner (pixel centres at +0.5), as PIL's. Points
    outside the input read `fill`.
    """
    a, b, c, d, e, f = m
    C, H, W = img.shape
    # The same map in affine_grid's normalised coordinates, where x = 2u/W − 1 and y = 2v/H − 1.
    theta = torch.tensor([[a, b * H / W, a + b * H / W + 2 * c / W - 1],
                          [d * W / H, e, d * W / H + e + 2 * f / H - 1]], dtype=img.dtype, device=img.device)
    grid = F.affine_grid(theta[None], [1, C + 1, H, W], align_corners=False)  # (1, H, W, 2)
    x = torch.cat([img, torch.ones_like(img[:1])])[None]                        # (1, C+1, H, W): image + coverage
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]  # (C+1, H, W)
    # Sampling is linear, so image + (1 − coverage) · fill is exactly sampling an image padded with fill.
    return (out[:C] + (1 - out[C:]) * fill).clamp(0, 1)


def _rotation(degrees: float, H: int, W: int) -> tuple[float, ...]:
    """PIL's Image.rotate: counter-clockwise by `degrees` about the image centre (W/2, H/2)."""
    t = -math.radians(degrees)
    a, b, d, e = math.cos(t), math.sin(t), -math.sin(t), math.cos(t)
    cx, cy = W / 2, H / 2
    return a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy


_GEOMETRIC = {  # name → (argument, H, W) → the PIL affine matrix
    "Rotate": _rotation,
    "ShearX": lambda s, H, W: (1, s, 0, 0, 1, 0),
    "ShearY": lambda s, H, W: (1, 0, 0, s, 1, 0),
    "TranslateXRel": lambda p, H, W: (1, 0, p * W, 0, 1, 0),
    "TranslateYRel": lambda p, H, W: (1, 0, 0, 0, 1, p * H),
}
_POINT = {  # name → (image, argument) → image
    "AutoContrast": lambda img, _: _auto_contrast(img),
    "Equalize": lambda img, _: _equalize(img),
    "Invert": lambda img, _: 1 - img,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _color,
    "ContrastIncreasing": _contrast,
    "BrightnessIncreasing": _brightness,
    "SharpnessIncreasing": _sharpness,
}


def _enhance_level(m: float, sign: int) -> float:
    return max(0.1, 1.0 + sign * (m / 10) * 0.9)  # 1 is identity; ±0.9 at m=10, never below 0.1


_LEVEL = {  # name → (magnitude m in [0, 10], random sign ±1) → the op's argument, as timm's LEVEL_TO_ARG
    "AutoContrast": lambda m, s: None,
    "Equalize": lambda m, s: None,
    "Invert": lambda m, s: None,
    "Rotate": lambda m, s: s * (m / 10) * 30.0,                           # degrees in [-30, 30]
    "PosterizeIncreasing": lambda m, s: 4 - int((m / 10) * 4),             # bits kept, 4 → 0
    "SolarizeIncreasing": lambda m, s: 256 - min(256, int((m / 10) * 256)),  # threshold, 256 → 0
    "SolarizeAdd": lambda m, s: min(128, int((m / 10) * 110)),            # added below 128, 0 → 110
    "ColorIncreasing": _enhance_level,
    "ContrastIncreasing": _enhance_level,
    "BrightnessIncreasing": _enhance_level,
    "SharpnessIncreasing": _enhance_level,
    "ShearX": lambda m, s: s * (m / 10) * 0.3,                            # shear factor in [-0.3, 0.3]
    "ShearY": lambda m, s: s * (m / 10) * 0.3,
    "TranslateXRel": lambda m, s: s * (m / 10) * 0.45,                    # fraction of the width
    "TranslateYRel": lambda m, s: s * (m / 10) * 0.45,
}


def rand_augment_op(img: Tensor, name: str, arg, *, fill: float = _FILL, interpolation: str = "bilinear") -> Tensor:
    """Apply one RandAugment op by name with its argument (what RandAugment.plan returns): (C, H, W) → same."""
    C, H, W = _check_image(img, "rand_augment_op")
    if name in _GEOMETRIC:
        return _affine(img, _GEOMETRIC[name](arg, H, W), fill, interpolation)
    if name in _POINT:
        return _POINT[name](img, arg)
    raise ValueError(f"rand_augment_op: unknown op {name!r}; expected one of {', '.join(RAND_INCREASING_OPS)}")


@dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment 'rand-m9-mstd0.5-inc1': num_ops ops, each kept with probability prob.

    Ops are drawn uniformly with replacement from `ops`; each gets a magnitude ~ N(magnitude,
    magnitude_std) clipped to [0, 10] and a random sign, mapped to its argument as timm does. Call on one
    float image (C, H, W) in [0, 1] with C = 1 or 3 (Color is identity on gray).
    """
    num_ops: int = 2                   # ops drawn per image (timm's n)
    magnitude: float = 9.0             # mean magnitude on timm's 0–10 scale (m)
    magnitude_std: float = 0.5         # std of the per-op magnitude (mstd); 0 makes it fixed
    prob: float = 0.5                  # probability of applying each drawn op (p)
    ops: tuple[str, ...] = RAND_INCREASING_OPS  # the choice set (inc1)
    interpolation: str = "bilinear"    # geometric ops' resampling; DeiT's timm recipe uses "bicubic"
    fill: float = _FILL                # value read from outside the image by geometric ops

    def __post_init__(self):
        unknown = [n for n in self.ops if n not in _LEVEL]
        if unknown or not self.ops:
            raise ValueError(f"RandAugment: ops must be a non-empty subset of {RAND_INCREASING_OPS} but "
                             f"{unknown or 'none'} given")
        if self.num_ops < 0 or not 0 <= self.prob <= 1:
            raise ValueError(f"RandAugment: need num_ops ≥ 0 and prob in [0, 1] but got num_ops={self.num_ops}, "
                             f"prob={self.prob}")
        if not 0 <= self.magnitude_std < math.inf:
            raise ValueError(f"RandAugment: magnitude_std must be finite and ≥ 0 but is {self.magnitude_std}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"RandAugment: interpolation must be 'nearest', 'bilinear' or 'bicubic' but is "
                             f"{self.interpolation!r}")

    def plan(self, generator: torch.Generator) -> list[tuple[str, object]]:
        """The ops to apply, [(name, argument), ...], drawn from generator (a fixed number of draws)."""
        g = _check_generator(generator, "RandAugment")
        which = torch.randint(len(self.ops), (self.num_ops,), generator=g)          # (n,)
        u = torch.rand(self.num_ops, 2, generator=g, dtype=torch.float64)          # (n, 2): apply?, sign
        z = torch.randn(self.num_ops, generator=g, dtype=torch.float64)            # (n,): magnitude noise
        plan = []
        for i in range(self.num_ops):
            if u[i, 0].item() >= self.prob:
                continue
            m = min(max(self.magnitude + self.magnitude_std * z[i].item(), 0.0), 10.0)
            name = self.ops[int(which[i])]
            plan.append((name, _LEVEL[name](m, -1 if u[i, 1].item() > 0.5 else 1)))
        return plan

    def __call__(self, img: Tensor, generator: torch.Generator) -> Tensor:
        C, _, _ = _check_image(img, "RandAugment")
        if C not in (1, 3):
            raise ValueError(f"RandAugment takes 1- or 3-channel images but got {C} channels; "
                             f"apply it before adding extra channels")
        for name, arg in self.plan(generator):
            img = rand_augment_op(img, name, arg, fill=self.fill, interpolation=self.interpolation)
        return img


# ---------------------------------------------------------------------------------------------------------------
# Random erasing


def random_erasing(img: Tensor, *, p: float = 0.25, scale: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 3.3), mode: str = "pixel",
                   generator: torch.Generator) -> Tensor:
    """timm's RandomErasing, one box: with probability p, replace a random box of one NORMALISED image.

    Up to 10 tries: area fraction ~ U(scale), log aspect ~ U(log ratio), kept if strictly inside the image.
    mode 'pixel' fills with per-pixel N(0, 1) noise, 'rand' with one N(0, 1) value per channel, 'const'
    with zeros (the mean, after normalisation). Returns a new tensor (C, H, W); the input is not changed.
    """
    g = _check_generator(generator, "random_erasing")
    C, H, W = _check_image(img, "random_erasing")
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"random_erasing: mode must be 'pixel', 'rand' or 'const' but is {mode!r}")
    scale = _check_range("scale", scale, "random_erasing")
    ratio = _check_range("ratio", ratio, "random_erasing", low=1e-12)
    if torch.rand((), generator=g, dtype=torch.float64).item() >= p:
        return img
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = _uniform(*scale, g) * H * W
        aspect = math.exp(_uniform(*log_ratio, g))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < W and h < H:
            top, left = _randint(0, H - h + 1, g), _randint(0, W - w + 1, g)
            shape = {"pixel": (C, h, w), "rand": (C, 1, 1), "const": None}[mode]
            fill = 0.0 if shape is None else torch.randn(shape, generator=g, dtype=img.dtype).to(img.device)
            out = img.clone()
            out[:, top:top + h, left:left + w] = fill
            return out
    return img


# ---------------------------------------------------------------------------------------------------------------
# Mixup / CutMix and the soft-target loss


def _beta(alpha: float, g: torch.Generator) -> float:
    """One Beta(α, α) draw as G1 / (G1 + G2) with G ~ Gamma(α, 1) taken from g.

    torch._standard_gamma is the sampler torch.distributions uses; unlike the distributions it takes a generator.
    """
    g1, g2 = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=g).tolist()
    return g1 / (g1 + g2) if g1 + g2 > 0 else 0.5


def _cutmix_box(H: int, W: int, lam: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """timm's rand_bbox: sides ⌊H√(1−λ)⌋×⌊W√(1−λ)⌋ at a uniform centre, clipped. Returns (y0, y1, x0, x1)."""
    r = math.sqrt(1 - lam)
    ch, cw = int(H * r), int(W * r)
    cy, cx = _randint(0, H, g), _randint(0, W, g)
    return (min(max(cy - ch // 2, 0), H), min(max(cy + (ch + 1) // 2, 0), H),
            min(max(cx - cw // 2, 0), W), min(max(cx + (cw + 1) // 2, 0), W))


def _smooth_one_hot(y: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B,) labels → (B, K): off = smoothing / K, on = 1 − smoothing + off (timm's mixup_target)."""
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, device=y.device)
    return t.scatter_(1, y.long()[:, None], 1.0 - smoothing + off)


def mix_batch(x: Tensor, y: Tensor, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
              prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """timm's Mixup in 'batch' mode: one λ for the batch, each sample paired with the flipped batch.

    With probability prob: CutMix with probability switch_prob if both alphas are > 0 (else whichever is),
    λ ~ Beta(α, α). Mixup: λ·x + (1−λ)·x.flip(0). CutMix: a box of area ≈ (1−λ) at a random centre is
    pasted from x.flip(0), and λ is corrected to the box's clipped area. Targets are
    λ·smooth(y) + (1−λ)·smooth(y.flip(0)). timm asserts an even batch; with the flip any size works (an
    odd batch's middle sample pairs with itself and is left unmixed).

    x: (B, C, H, W), y: (B,) class indices → (x_mixed (B, C, H, W), targets (B, K) float). x is not changed.
    """
    g = _check_generator(generator, "mix_batch")
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"mix_batch takes x (B, C, H, W) and y (B,) but got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}; pass class indices, not one-hot targets")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise ValueError(f"mix_batch: labels span [{int(y.min())}, {int(y.max())}] but num_classes is "
                         f"{num_classes}; labels must lie in [0, num_classes)")
    if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha == cutmix_alpha == 0:
        raise ValueError(f"mix_batch: need alphas ≥ 0 with at least one > 0 but got mixup_alpha={mixup_alpha}, "
                         f"cutmix_alpha={cutmix_alpha}; to turn mixing off pass prob=0")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"mix_batch: label_smoothing must be in [0, 1) but is {label_smoothing}")
    lam, cutmix = 1.0, False
    u = torch.rand(2, generator=g, dtype=torch.float64).tolist()  # mix?, cutmix?: always both drawn
    if u[0] < prob:
        cutmix = mixup_alpha == 0 or (cutmix_alpha > 0 and u[1] < switch_prob)
        lam = _beta(cutmix_alpha if cutmix else mixup_alpha, g)
    if cutmix:
        H, W = x.shape[-2:]
        y0, y1, x0, x1 = _cutmix_box(H, W, lam, g)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    elif lam < 1.0:
        x = x * lam + x.flip(0) * (1.0 - lam)
    t = _smooth_one_hot(y, num_classes, label_smoothing)  # (B, K)
    return x, t * lam + t.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of −Σ_k targets · log_softmax(logits). logits, targets: (B, K) → scalar."""
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"soft_target_cross_entropy takes logits and targets both (B, K) but got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}; make targets with mix_batch")
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
