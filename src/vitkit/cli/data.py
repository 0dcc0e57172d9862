"""`vitkit data`: the embedded data sets, and exporting them as image folders."""
from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="list the embedded data sets or export one as image files",
                       description="Without arguments, list the data sets that ship inside installed packages. "
                                   "`vitkit data export NAME OUT` writes one as an ImageFolder (OUT/<class>/<i>.png), "
                                   "e.g. held-out digits to try `vitkit predict` on. `digit-strips` writes the "
                                   "captioning strips as OUT/<i>.png with OUT/captions.txt, the captioned-folder "
                                   "form `vitkit train --objective caption --data OUT` reads.")
    p.add_argument("action", nargs="?", choices=["list", "export"], default="list")
    p.add_argument("name", nargs="?", help="data set to export (digits, mnist, digit-strips)")
    p.add_argument("out", nargs="?", help="output folder")
    p.add_argument("--split", choices=["train", "val", "all"], default="all",
                   help="which part to export; train/val use the same seeded split as `vitkit train`")
    p.add_argument("--count", type=int, help="export only the first N images of the part")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0, as vitkit train)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="split fraction (default 0.2, as vitkit train)")


def run(args) -> int:
    from ..data import EMBEDDED, export_images, load_embedded, split

    if args.action == "list":
        for name, text in EMBEDDED.items():
            print(f"{name:8} {text}")
        return 0
    if not args.name or not args.out:
        raise ValueError("usage: vitkit data export NAME OUT, e.g. vitkit data export digits digits_png")
    if args.name == "digit-strips":
        return _export_strips(args)
    dataset = load_embedded(args.name)
    indices = list(range(len(dataset)))
    if args.split != "all":
        train_part, val_part = split(dataset, args.val_fraction, args.seed)
        indices = list((train_part if args.split == "train" else val_part).indices)
    if args.count is not None:
        indices = indices[:args.count]
    paths = export_images(dataset, args.out, indices)
    print(f"wrote {len(paths)} images of {args.name} ({args.split}) to {args.out}")
    return 0


def _export_strips(args) -> int:
    """The strips `--objective caption --data digit-strips` trains (--split train) or is measured on (val, the
    default for 'all' too: strips are composed from one split's digits), as PNGs with a captions.txt."""
    from pathlib import Path

    from PIL import Image

    from ..data import build_dataset, split
    from ..data.strips import DigitStrips
    from ..train.caption import STRIPS, TRAIN_KEY, VAL_KEY, VAL_STRIPS

    train_digits, val_digits = split(build_dataset("mnist"), args.val_fraction, args.seed)
    training = args.split == "train"
    strips = DigitStrips(train_digits if training else val_digits, STRIPS if training else VAL_STRIPS, args.seed,
                         TRAIN_KEY if training else VAL_KEY, mean=(0.0,), std=(1.0,))
    count = min(args.count or len(strips), len(strips))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        image, caption = strips[i]
        name = f"{i:04d}.png"
        Image.fromarray((image[0] * 255).round().byte().numpy()).save(out / name)
        lines.append(f"{name}\t{strips.vocab.decode(caption[1:])}")
    (out / "captions.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {count} digit strips ({'train' if training else 'val'}) and captions.txt to {out}")
    return 0
