"""Speed of DeiT's training augmentation on the CPU: vitkit.data.augment per image, and kornia per batch if installed.

    python benchmarks/augment_speed.py [--src 224x224] [--size 224] [--batch 64] [--repeats 5] [--threads 1]

Ours: per image, random_resized_crop → hflip → RandAugment('rand-m9-mstd0.5-inc1') → random_erasing (p=0.25,
'pixel'; on the [0, 1] image here, normalisation is a constant cost left out of both), each image with its own
generator rng(0, i). Then one line per RandAugment op (always applied, magnitude 9) at the output size.
kornia (skipped when not importable): AugmentationSequential(RandomResizedCrop, RandomHorizontalFlip,
RandAugment(n=2, m=27), RandomErasing(p=0.25)) on a stacked batch; m=27 of kornia's 0–30 is timm's 9 of 0–10.
Times: median over --repeats of one pass over --batch images, after one warm-up pass; ms/image = pass / batch.
The script also checks whether kornia's draws can be a pure function of a seed without the global RNG.
"""
import argparse
import statistics
import time

import torch

from vitkit.data.augment import RAND_INCREASING_OPS, RandAugment, hflip, random_erasing, random_resized_crop, rng


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def ours(images: torch.Tensor, size: int, repeats: int) -> float:
    """ms for one pass over the images, one at a time."""
    ra = RandAugment()  # num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.5

    def one(i, img):
        g = rng(0, i)
        x = random_resized_crop(img, size, generator=g)
        x = hflip(x, 0.5, generator=g)
        x = ra(x, g)
        return random_erasing(x, p=0.25, generator=g)

    return median_ms(lambda: [one(i, img) for i, img in enumerate(images)], repeats)


def ours_per_op(image: torch.Tensor, size: int, repeats: int) -> list[tuple[str, float]]:
    """ms per call of each of our ops on one image (RandAugment ops always applied, at magnitude 9)."""
    g, n = rng(2), 20
    x = random_resized_crop(image, size, generator=g)
    rows = [("random_resized_crop", lambda: random_resized_crop(image, size, generator=g))]
    for name in RAND_INCREASING_OPS:  # one op, always applied, magnitude exactly 9
        ra = RandAugment(num_ops=1, magnitude=9.0, magnitude_std=0.0, prob=1.0, ops=(name,))
        rows.append((name, lambda ra=ra: ra(x, g)))
    rows += [("random_erasing p=1", lambda: random_erasing(x, p=1.0, generator=g))]
    return [(name, median_ms(lambda: [fn() for _ in range(n)], repeats) / n) for name, fn in rows]


def kornia_pipeline(size: int):
    """kornia's closest equivalent, or None where kornia is not importable."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
        K.auto.RandAugment(n=2, m=27), K.RandomErasing(p=0.25))


def kornia_reproducibility(aug, x: torch.Tensor) -> None:
    """Does kornia take a generator, does it draw from the global RNG, and what shifts its draws?"""
    import kornia.augmentation as K
    try:
        K.RandomErasing(p=1.0, generator=torch.Generator())
        print("- a generator= argument is accepted")
    except Exception as e:  # kornia 0.9 refuses it
        print(f"- generator= is refused at construction ({type(e).__name__}); there is no per-call generator either")
    state = torch.get_rng_state()
    with torch.no_grad():
        aug(x)
    print(f"- one call changes torch's global RNG state: {not torch.equal(state, torch.get_rng_state())}")
    outs = []
    for dropout_first in (False, False, True):
        torch.manual_seed(123)
        if dropout_first:  # what a training step does between two augmentation calls
            torch.nn.functional.dropout(torch.ones(10), 0.1, training=True)
        with torch.no_grad():
            outs.append(aug(x))
    print(f"- manual_seed(123) then a call, twice: identical = {torch.equal(outs[0], outs[1])}")
    print(f"- manual_seed(123), one dropout call, then a call: identical = {torch.equal(outs[0], outs[2])}")
    from kornia.augmentation.auto.rand_augment.rand_augment import default_policy as policy
    ra = K.auto.RandAugment(n=2, m=27)
    chosen = []
    for _ in range(3):
        with torch.no_grad():
            ra(x)
        chosen.append([policy[int(p.name.rsplit("_", 1)[1])][0][0] for p in ra._params])  # "PolicySequential_3"
    print(f"- RandAugment on a batch of {len(x)}, three calls: ops {chosen} — one choice per call, "
          f"shared by every sample of the batch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="224x224", help="source image size HxW")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    H, W = (int(v) for v in args.src.split("x"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, H, W), generator=g).float() / 255  # photo-like uint8 levels
    print(f"{cpu_model()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"source {H}×{W} RGB → {args.size}×{args.size}, fp32, median of {args.repeats}\n")
    B = len(images)
    print("| pipeline | batch | ms / image | images / s |\n|---|---:|---:|---:|")
    ms = ours(images, args.size, args.repeats)
    print(f"| vitkit.data.augment, one image at a time | {B} | {ms / B:.3f} | {1e3 * B / ms:.0f} |")
    aug = kornia_pipeline(args.size)
    if aug is None:
        print("| kornia | — | skipped: not importable | |")
    else:
        import kornia
        with torch.no_grad():
            ms = median_ms(lambda: aug(images), args.repeats)
        print(f"| kornia {kornia.__version__} AugmentationSequential, one batch | {B} | {ms / B:.3f} | "
              f"{1e3 * B / ms:.0f} |")
    print("\nours, one op on one image:\n\n| op | ms |\n|---|---:|")
    for name, ms in ours_per_op(images[0], args.size, args.repeats):
        print(f"| {name} | {ms:.3f} |")
    if aug is not None:
        print("\nkornia's reproducibility:")
        kornia_reproducibility(aug, images[:4])


if __name__ == "__main__":
    main()
