"""`vitkit caption`: a caption for each image, with a checkpoint of a `vitkit train --objective caption` run.

    vitkit caption runs/caption/best.safetensors strip1.png strip2.png          # greedy
    vitkit caption runs/caption/best.safetensors photos/*.jpg --beam 4

Each image is read as the run read its training images (its channels, resized to its size, normalised as it
was) and printed as 'path<TAB>caption', in the order given.
"""
from __future__ import annotations

from ..errors import VitkitError


def add_parser(sub, name):
    p = sub.add_parser(name, help="caption images with a captioning checkpoint (greedy or beam search)",
                       description="Print a caption for each image: 'path<TAB>caption', one line each, in order.")
    p.add_argument("checkpoint", help="a checkpoint of a `vitkit train --objective caption` run")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--beam", type=int, help="beam search with this many hypotheses (default: greedy)")
    p.add_argument("--alpha", type=float, default=0.6, help="beam search's length penalty exponent (default: 0.6)")
    p.add_argument("--batch-size", type=int, default=32, help="images captioned at a time (default: 32)")


def caption_record(ckpt) -> dict:
    record = ckpt.data
    if "vocab" not in record or "img_size" not in record or "src_len" in record:
        raise VitkitError(f"{ckpt.path} ({ckpt.model_name}) was not trained with --objective caption; vitkit "
                          f"caption reads captioning runs, e.g. from `vitkit train --objective caption --data "
                          f"digit-strips`")
    return record


def caption_images(model, paths: list[str], record: dict, beam: int | None = None, alpha: float = 0.6,
                   batch_size: int = 32) -> list[str]:
    """The caption of each image file, decoded greedily or by beam search."""
    import torch

    from ..data import load_image, normalize
    from ..data.sequences import Vocabulary
    from ..generate import beam_search, greedy

    vocab, size = Vocabulary(record["vocab"]), tuple(record["img_size"])
    out = []
    for start in range(0, len(paths), batch_size):
        images = torch.stack([normalize(load_image(p, in_chans=record["in_chans"], img_size=size), record["mean"],
                                        record["std"]) for p in paths[start:start + batch_size]])
        n = record["tgt_len"] - 1
        ids = greedy(model, images, n) if not beam else beam_search(model, images, n, beam=beam, alpha=alpha)
        out += [vocab.decode(row) for row in ids]
    return out


def run(args) -> int:
    from ..weights import load_checkpoint

    for flag, value in (("--beam", args.beam), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise VitkitError(f"{flag} must be at least 1, got {value}")
    ckpt = load_checkpoint(args.checkpoint)
    record = caption_record(ckpt)
    model = ckpt.build_model()
    for path, text in zip(args.images, caption_images(model, args.images, record, args.beam, args.alpha,
                                                      args.batch_size)):
        print(f"{path}\t{text}")
    return 0
