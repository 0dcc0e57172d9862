"""What a captioner looks at while it writes: the cross-attention of each generated token over the image.

    caption_attention(model, images, max_len) → per image: (generated ids, maps (T, Gh, Gw))
    place_grid(model)                         → (Gh, Gw) of the memory positions that are places

For the captioners of models/captioner.py (Captioner, ShowAttendTell): any model with `align(images, tgt)`
(B, T, N), `place_grid()` (prefix, Gh, Gw), `token_x()` (N,) with NaN for a position that is no place (a ViT's [CLS]), and the seams
vitkit.generate decodes through.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..generate import greedy


def place_grid(model: nn.Module) -> tuple[int, int]:
    """(Gh, Gw): the grid, in row-major order, of the captioner's memory positions that are places."""
    _, gh, gw = model.place_grid()
    return int(gh), int(gw)


@torch.no_grad()
def caption_attention(model: nn.Module, images: Tensor, max_len: int) -> list[tuple[list[int], Tensor]]:
    """Greedy captions of images (B, C, H, W), normalised as the model was trained, and where the model looked
    while writing each token.

    Per image: the generated ids (EOS included where one was emitted; the padding after it dropped) and maps
    (T, Gh, Gw), T = len(ids): row t is the last decoder layer's cross-attention, averaged over heads, of the
    step that wrote token t (teacher forcing with the generated tokens: `align(image, [BOS, y1 … y(T-1)])`),
    over the place positions only (a [CLS] left out, so a row may sum to less than 1).
    """
    model.eval()
    cfg = model.cfg
    prefix, gh, gw = model.place_grid()  # the memory: `prefix` non-places, then a gh×gw grid of places
    generated = greedy(model, images, max_len)  # (B, ≤ max_len): ids after BOS, then EOS, then PAD
    out = []
    for b, row in enumerate(generated.tolist()):
        ids = row[:row.index(cfg.eos_id) + 1] if cfg.eos_id in row else row
        tgt = torch.tensor([[cfg.bos_id, *ids[:-1]]], device=images.device)  # (1, T)
        weights = model.align(images[b:b + 1], tgt)[0].float().cpu()  # (T, N)
        out.append((ids, weights[:, prefix:].reshape(len(ids), gh, gw)))  # (T, Gh, Gw)
    return out
