"""vitkit.data.augment: DeiT's augmentation on tensors, every draw from an explicit generator."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit.data import (RAND_INCREASING_OPS, RandAugment, hflip, mix_batch, rand_augment_op, random_erasing,
                         random_resized_crop, random_resized_crop_box, resize_center_crop, rng, rng_seed,
                         soft_target_cross_entropy)
from vitkit.data import augment

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
FILL = 128 / 255


def _uint8_image(c=3, h=32, w=40, lo=0, hi=256, seed=0) -> torch.Tensor:
    """A float image (C, H, W) whose values lie on the 1/255 grid, as a decoded photo's do."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (c, h, w), generator=g).float() / 255


def _gradient(c=3, h=32, w=40) -> torch.Tensor:
    """A smooth image on the 1/255 grid: bilinear resampling of it is well defined away from the edges."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.stack([yy, xx, (yy + xx) / 2])[:c] * 255).round() / 255


# ---- rng -----------------------------------------------------------------------------------------

def test_rng_is_stable_and_order_sensitive():
    assert rng_seed(1234, 5, 67, 0, 8) == 6512863609716629002  # fixed forever: changing it changes every run
    assert rng(1234, 5, 67, 0, 8).initial_seed() == rng_seed(1234, 5, 67, 0, 8)
    assert rng_seed(0, 1) != rng_seed(1, 0) and rng_seed(0) != rng_seed(0, 0)
    seeds = {rng_seed(s, e, i) for s in range(3) for e in range(3) for i in range(10)}
    assert len(seeds) == 90 and all(0 <= s < 2 ** 63 for s in seeds)
    assert not torch.equal(torch.rand(8, generator=rng(0, 1)), torch.rand(8, generator=rng(1, 0)))
    assert rng_seed(-1) == rng_seed(2 ** 64 - 1)  # negative keys wrap, as two's complement
    with pytest.raises(TypeError, match="keys must be integers"):
        rng(0, 1.5)


# ---- determinism, for every random op ------------------------------------------------------------

RANDOM_OPS = {
    "random_resized_crop": lambda img, g: random_resized_crop(img, (16, 20), generator=g),
    "hflip": lambda img, g: hflip(img, 0.5, generator=g),
    "RandAugment": lambda img, g: RandAugment(prob=1.0)(img, g),
    "random_erasing": lambda img, g: random_erasing(img, p=1.0, generator=g),
    "mix_batch": lambda img, g: mix_batch(torch.stack([img, 1 - img, img.flip(-1), img * 0.5]),
                                          torch.tensor([0, 1, 2, 3]), 4, generator=g),
}


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_seeded_and_leaves_global_rngs_alone(name):
    op, img = RANDOM_OPS[name], _uint8_image(h=30, w=45)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    outs = [op(img, rng(7, i)) for i in range(6)]
    assert torch.get_rng_state().equal(states[0]), f"{name} drew from torch's global RNG"
    assert random.getstate() == states[1] and np.array_equal(np.random.get_state()[1], states[2])
    again = op(img, rng(7, 0))
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (outs[0], again))):
        assert torch.equal(a, b), f"{name}: the same seed gave a different result"
    flat = [torch.cat([t.flatten() for t in (o if isinstance(o, tuple) else (o,))]) for o in outs]
    distinct = {tuple(f.tolist()) for f in flat}
    assert len(distinct) >= 2, f"{name}: six seeds gave one result"  # hflip has two outcomes only
    if name != "hflip":
        assert len(distinct) >= 5, f"{name}: different seeds gave the same result"


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_refuses_a_missing_generator(name):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        RANDOM_OPS[name](_uint8_image(), None)


# ---- shapes, dtypes, ranges ----------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("hw", [(30, 45), (45, 30)])
def test_shapes_dtypes_ranges(c, hw):
    img, g = _uint8_image(c, *hw), rng(0)
    for out, shape in [(random_resized_crop(img, 16, generator=g), (c, 16, 16)),
                       (random_resized_crop(img, (12, 20), generator=g), (c, 12, 20)),
                       (resize_center_crop(img, 24), (c, 24, 24)),
                       (resize_center_crop(img, (16, 20), crop_pct=0.9), (c, 16, 20)),
                       (hflip(img, 1.0, generator=g), (c, *hw)),
                       (RandAugment(num_ops=4, prob=1.0)(img, g), (c, *hw))]:
        assert out.shape == shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(hflip(img, 1.0, generator=g), img.flip(-1)) and hflip(img, 0.0, generator=g) is img
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        random_resized_crop(img[None], 16, generator=g)
    with pytest.raises(TypeError, match="float image"):
        RandAugment()((img * 255).byte(), g)


# ---- random_resized_crop -------------------------------------------------------------------------

def test_rrc_full_scale_square_is_a_plain_resize():
    img = _uint8_image(3, 48, 48)
    out = random_resized_crop(img, 20, scale=(1, 1), ratio=(1, 1), generator=rng(3))
    ref = F.interpolate(img[None], size=(20, 20), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(out, ref)


def test_rrc_boxes_follow_scale_and_ratio():
    H, W, scale, ratio = 120, 180, (0.08, 1.0), (3 / 4, 4 / 3)
    g, fracs, where = rng(11), [], []
    for _ in range(400):
        top, left, h, w = random_resized_crop_box(H, W, scale=scale, ratio=ratio, generator=g)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        fracs.append(h * w / (H * W))
        if h < H and w < W:
            where.append((top / (H - h), left / (W - w)))  # the box's offset as a fraction of its free range
        if (h, w) != (H, W):  # not the fallback: the aspect is within ratio, up to rounding to pixels
            assert ratio[0] - 0.1 <= w / h <= ratio[1] + 0.1
    fracs = torch.tensor(fracs)
    assert fracs.min() >= scale[0] * 0.9 and fracs.max() <= scale[1]
    assert fracs.min() < 0.15 and fracs.max() > 0.8  # the draws span the range
    where = torch.tensor(where)                       # (n, 2): placed uniformly in the free range
    assert (where.mean(0) - 0.5).abs().max() < 0.06 and where.min() < 0.02 and where.max() > 0.98


def test_rrc_fallback_is_the_clamped_central_crop():
    g = rng(0)
    # An aspect of 10 never fits a square: the fallback takes the full width and clamps the ratio to 10.
    assert random_resized_crop_box(100, 100, scale=(0.5, 1), ratio=(10, 10), generator=g) == (45, 0, 10, 100)
    assert random_resized_crop_box(100, 100, scale=(0.5, 1), ratio=(0.1, 0.1), generator=g) == (0, 45, 100, 10)
    # An area over 1 never fits; the image's own ratio (1.5) is within range, so the fallback is the image.
    assert random_resized_crop_box(100, 150, scale=(2, 2), ratio=(1, 2), generator=g) == (0, 0, 100, 150)
    img = _uint8_image(3, 300, 451)
    assert random_resized_crop(img, 64, generator=g).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="scale must be"):
        random_resized_crop(img, 64, scale=(0.9, 0.1), generator=g)


# ---- resize_center_crop --------------------------------------------------------------------------

def _disc(h, w, r) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r).float()[None].expand(3, h, w)


@pytest.mark.parametrize("hw", [(300, 451), (451, 300)])
def test_resize_center_crop_keeps_aspect(hw):
    img = _disc(*hw, r=100)
    out = resize_center_crop(img, 224)[0] > 0.5                         # (224, 224)
    height, width = out.any(1).sum().item(), out.any(0).sum().item()
    expected = 200 * 256 / min(hw)                                      # short side → floor(224 / 0.875) = 256
    assert abs(height - width) <= 1 and abs(height - expected) <= 2
    squashed = F.interpolate(img[None], size=(224, 224), mode="bilinear")[0, 0] > 0.5
    assert abs(squashed.any(1).sum().item() - squashed.any(0).sum().item()) > 20  # what the check guards against


def test_resize_center_crop_rules():
    img = _uint8_image(3, 64, 64)
    assert torch.equal(resize_center_crop(img, 64, crop_pct=1.0), img)
    wide = _uint8_image(3, 30, 45)  # crop_pct=1 and a short side already equal to size: only the crop
    assert torch.equal(resize_center_crop(wide, 30, crop_pct=1.0), wide[:, :, 8:38])
    big = _uint8_image(3, 512, 512)  # 224 at 0.875: resize to 256, crop the centre 224
    ref = F.interpolate(big[None], size=(256, 256), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(resize_center_crop(big, 224), ref[:, 16:240, 16:240])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]"):
            resize_center_crop(img, 32, crop_pct=bad)


# ---- RandAugment ---------------------------------------------------------------------------------

def test_randaugment_identities():
    img = _uint8_image(3, 30, 45)
    zero = RandAugment(num_ops=5, magnitude=0, magnitude_std=0, prob=1.0, ops=GEOMETRIC)
    for s in range(10):
        assert zero.plan(rng(s)), "prob=1 must apply every op"
        torch.testing.assert_close(zero(img, rng(s)), img, atol=1e-5, rtol=0)
    twice = rand_augment_op(rand_augment_op(img, "Invert", None), "Invert", None)
    torch.testing.assert_close(twice, img, atol=1e-6, rtol=0)  # 1 − (1 − x) is x up to float rounding
    off = RandAugment(num_ops=4, prob=0.0)
    assert all(torch.equal(off(img, rng(s)), img) for s in range(10))


def test_geometry_follows_pil_conventions():
    img = _uint8_image(3, 16, 16)
    # Rotate is counter-clockwise on screen about the centre, as PIL's Image.rotate.
    torch.testing.assert_close(rand_augment_op(img, "Rotate", 90.0), torch.rot90(img, 1, (1, 2)), atol=1e-5, rtol=0)
    # TranslateXRel p moves the content left by p · width and fills the right with gray.
    out = rand_augment_op(img, "TranslateXRel", 0.25)
    torch.testing.assert_close(out[:, :, :12], img[:, :, 4:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 12:], torch.full_like(out[:, :, 12:], FILL), atol=1e-6, rtol=0)


def test_equalize_flattens_the_histogram():
    g = torch.Generator().manual_seed(1)
    img = (torch.randn(1, 40, 40, generator=g) * 12 + 110).round().clamp(0, 255) / 255  # narrow, peaked

    def distance_to_uniform(x):  # Kolmogorov–Smirnov distance of the values' CDF from U(0, 1)
        v = x.flatten().sort().values
        return (v - (torch.arange(v.numel()) + 0.5) / v.numel()).abs().max().item()

    out = rand_augment_op(img, "Equalize", None)
    assert distance_to_uniform(img) > 0.3 and distance_to_uniform(out) < 0.05


def test_every_op_reachable_with_both_signs():
    ra, seen, signs = RandAugment(prob=1.0), set(), set()
    for s in range(200):
        for name, arg in ra.plan(rng(s)):
            seen.add(name)
            if name == "Rotate":
                assert 0 < abs(arg) <= 30
                signs.add(arg > 0)
            if name == "PosterizeIncreasing":
                assert 0 <= arg <= 4
    assert seen == set(RAND_INCREASING_OPS) and signs == {True, False}


def test_grayscale_runs_every_op_and_color_is_identity():
    gray = _uint8_image(1, 20, 24)
    for name in RAND_INCREASING_OPS:
        arg = augment._LEVEL[name](7.0, 1)
        out = rand_augment_op(gray, name, arg)
        assert out.shape == gray.shape and 0 <= out.min() and out.max() <= 1, name
    assert torch.equal(rand_augment_op(gray, "ColorIncreasing", 1.8), gray)


def _pil(img):
    from PIL import Image
    arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def _tensor(pil, c):
    a = torch.from_numpy(np.array(pil)).float() / 255
    return a[None] if c == 1 else a.permute(2, 0, 1)


@pytest.mark.parametrize("c", [1, 3])
def test_point_ops_match_timm(timm, c):
    from timm.data import auto_augment as aa
    # Exact ops: integer LUTs on uint8 levels (ours differ only by float rounding, ≪ 1/255).
    exact = [("Invert", None, aa.invert), ("SolarizeIncreasing", 100, lambda p: aa.solarize(p, 100)),
             ("PosterizeIncreasing", 2, lambda p: aa.posterize(p, 2)), ("AutoContrast", None, aa.auto_contrast),
             ("Equalize", None, aa.equalize), ("SolarizeAdd", 50, lambda p: aa.solarize_add(p, 50))]
    # Enhance ops: PIL rounds its degenerate image and result to uint8 levels and we do not, so up to 1.5/255.
    blended = [("ContrastIncreasing", 0.4, lambda p: aa.contrast(p, 0.4)),
               ("BrightnessIncreasing", 1.5, lambda p: aa.brightness(p, 1.5)),
               ("SharpnessIncreasing", 1.8, lambda p: aa.sharpness(p, 1.8))]
    if c == 3:
        blended.append(("ColorIncreasing", 1.7, lambda p: aa.color(p, 1.7)))
    for img in (_uint8_image(c), _uint8_image(c, lo=60, hi=180, seed=1)):  # full range, and a narrow one
        for cases, tol in ((exact, 1e-6), (blended, 1.5 / 255)):
            for name, arg, pil_op in cases:
                ours, theirs = rand_augment_op(img, name, arg), _tensor(pil_op(_pil(img)), c)
                err = (ours - theirs).abs().max().item()
                # AutoContrast: PIL truncates i·scale + offset to an integer, so up to 1/255 on a narrow image.
                assert err <= (1 / 255 if name == "AutoContrast" else tol), f"{name}: {err * 255:.2f}/255"


def test_geometric_ops_match_timm_where_fully_inside(timm):
    """Bilinear, gray fill: equal to PIL within 1/255 wherever the sample lies inside the image.

    At the image border PIL reads its nearest edge pixel or the fill, where grid_sample blends the two.
    """
    from PIL import Image
    from timm.data import auto_augment as aa
    img, kw = _gradient(), dict(resample=Image.BILINEAR, fillcolor=(128, 128, 128))
    cases = [("Rotate", 20.0, aa.rotate), ("Rotate", -27.0, aa.rotate), ("ShearX", 0.2, aa.shear_x),
             ("ShearY", -0.2, aa.shear_y), ("TranslateXRel", 0.3, aa.translate_x_rel),
             ("TranslateYRel", -0.21, aa.translate_y_rel)]
    for name, arg, pil_op in cases:
        ours, theirs = rand_augment_op(img, name, arg), _tensor(pil_op(_pil(img), arg, **kw), 3)
        inside = rand_augment_op(torch.ones(1, *img.shape[1:]), name, arg, fill=0.0)[0] > 1 - 1e-6  # (H, W)
        assert inside.float().mean() > 0.6
        assert (ours - theirs)[:, inside].abs().max() <= 1 / 255 + 1e-6, name


# ---- random_erasing ------------------------------------------------------------------------------

def test_random_erasing():
    img = torch.ones(3, 40, 60)
    assert random_erasing(img, p=0.0, generator=rng(0)) is img
    scale = (0.02, 1 / 3)
    for s in range(30):
        out = random_erasing(img, p=1.0, scale=scale, mode="const", generator=rng(s))
        erased = (out == 0).all(0)                               # (H, W)
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert h and w and erased.sum() == h * w, "the erased pixels form one box"
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        frac, slack = h * w / img[0].numel(), (h + w) / 2 / img[0].numel() + 1e-3  # rounding h, w to pixels
        assert scale[0] - slack <= frac <= scale[1] + slack
    assert torch.equal(img, torch.ones(3, 40, 60)), "the input must not change"
    noisy = random_erasing(torch.zeros(3, 64, 64), p=1.0, scale=(0.3, 0.3), ratio=(1, 1), generator=rng(1))
    box = noisy[noisy != 0]
    assert box.numel() > 3000 and abs(box.mean()) < 0.1 and abs(box.std() - 1) < 0.1  # per-pixel N(0, 1)


# ---- mix_batch -----------------------------------------------------------------------------------

def _lam(targets, y, smoothing=0.1):
    """λ from a mixed target row: t[i, y_i] = λ · on + (1 − λ) · off when y_i differs from its partner's."""
    K = targets.shape[1]
    off, on = smoothing / K, 1 - smoothing + smoothing / K
    return ((targets[0, y[0]] - off) / (on - off)).item()


def test_mix_batch_targets_and_prob_zero():
    x, y, K = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5]), 10
    for s in range(10):
        xm, t = mix_batch(x, y, K, generator=rng(s))
        assert xm.shape == x.shape and t.shape == (6, K) and t.dtype == torch.float32
        torch.testing.assert_close(t.sum(1), torch.ones(6))
    xm, t = mix_batch(x, y, K, prob=0.0, generator=rng(0))
    assert torch.equal(xm, x)
    expected = torch.full((6, K), 0.01).scatter_(1, y[:, None], 0.91)  # off = 0.1 / 10, on = 0.9 + off
    torch.testing.assert_close(t, expected)


def test_cutmix_lambda_is_the_real_box_area():
    B, H, W = 4, 20, 30
    x = torch.arange(B).float()[:, None, None, None].expand(B, 3, H, W)  # every sample a different constant
    y, areas = torch.arange(B), set()
    for s in range(40):
        xm, t = mix_batch(x, y, 4, mixup_alpha=0.0, cutmix_alpha=1.0, generator=rng(s))
        pasted = (xm[0] != x[0]).all(0)                                   # (H, W): from sample B−1
        assert torch.equal(pasted, (xm[0] == x[B - 1]).all(0))
        assert math.isclose(1 - pasted.float().mean().item(), _lam(t, y), abs_tol=1e-6)
        areas.add(pasted.sum().item())
    assert len(areas) > 20  # the boxes vary


def test_mixup_is_the_convex_blend_and_matches_timm(timm, monkeypatch):
    from timm.data.mixup import Mixup
    x, y, K = torch.rand(8, 3, 10, 12), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]), 10
    xm, t = mix_batch(x, y, K, mixup_alpha=0.8, cutmix_alpha=0.0, generator=rng(5))
    lam = _lam(t, y)
    assert 0 < lam < 1
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6, rtol=0)
    monkeypatch.setattr(Mixup, "_params_per_batch", lambda self: (lam, False))
    timm_x, timm_t = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=K)(x.clone(), y)
    torch.testing.assert_close(xm, timm_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(t, timm_t, atol=1e-6, rtol=0)


def test_mix_batch_odd_batch_and_errors():
    x, y = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    xm, t = mix_batch(x, y, 3, cutmix_alpha=0.0, label_smoothing=0.0, generator=rng(2))
    torch.testing.assert_close(xm[1], x[1])                               # the middle sample pairs with itself
    torch.testing.assert_close(t[1], torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one > 0"):
        mix_batch(x, y, 3, mixup_alpha=0.0, cutmix_alpha=0.0, generator=rng(0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        mix_batch(x, y, 2, generator=rng(0))


def test_beta_draws_have_the_beta_moments():
    g = rng(0)
    lam = torch.tensor([augment._beta(0.8, g) for _ in range(4000)])
    assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / (4 * 2.6)) < 0.01  # Var Beta(a, a) = 1/(4(2a+1))


# ---- soft_target_cross_entropy -------------------------------------------------------------------

def test_soft_target_cross_entropy_matches_torch():
    logits, y, K = torch.randn(5, 7), torch.tensor([0, 6, 3, 3, 1]), 7
    torch.testing.assert_close(soft_target_cross_entropy(logits, F.one_hot(y, K).float()), F.cross_entropy(logits, y))
    _, smooth = mix_batch(torch.zeros(5, 1, 2, 2), y, K, prob=0.0, label_smoothing=0.1, generator=rng(0))
    torch.testing.assert_close(soft_target_cross_entropy(logits, smooth),
                               F.cross_entropy(logits, y, label_smoothing=0.1))
    with pytest.raises(ValueError, match=r"both \(B, K\)"):
        soft_target_cross_entropy(logits, y)
