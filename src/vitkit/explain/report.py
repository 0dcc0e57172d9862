"""A self-contained HTML report of what a ViT attends to, plus the figures as PNG files.

    explain_to_dir(model, images, names, out_dir, classes=..., mean=..., std=...) → report.html path

The report holds every image inline as a base64 data URI (no network, no external JS or CSS). Per input
image: the image, the top-k prediction bars, the [CLS] attention overlay with a layer selector
(<select id="layer">) and a head selector (<select id="head">, heads and "mean") that swap the overlay
from a precomputed JSON table (<script id="overlays">: [image][layer][head..., mean] → data URI), and the
rollout overlay. For the model: mean attention distance against depth, position-embedding similarity and
the principal patch-embedding filters. The page reads `#layer=N&head=H` (H an index or "mean") on load,
so a link can open it at a given layer and head; changing a selector updates the address.

Panels a model cannot give (no [CLS] token, no absolute position embedding) are skipped with a note.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import Tensor, nn

from ..data import EvalTransform
from .attention import _resolve_layers, attention_layers, attention_rollout, cls_attention, head_mean, \
    mean_attention_distance, upsample_to_image
from .embeddings import patch_embed_filters, pos_embed_similarity
from .plots import plot_attention_distance, plot_attention_overlay, plot_filters, plot_pos_embed_similarity

# ---- rendering small PNGs ---------------------------------------------------------------------------


def png_bytes(fig) -> bytes:
    """A matplotlib Figure → PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _to_rgb(image: Tensor, size: int) -> np.ndarray:
    """(C, H, W) in any range → (size, size, 3) float in [0, 1], min-max scaled, nearest-upsampled."""
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    img = img[:1].expand(3, -1, -1) if img.shape[0] == 1 else img[:3]  # (3, H, W)
    img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="nearest")[0]
    return img.permute(1, 2, 0).numpy()  # (size, size, 3)


def overlay_png(image: Tensor, attn: Tensor | None, size: int = 224, alpha: float = 0.55,
                cmap: str = "jet") -> bytes:
    """One image (C, H, W) under one attention map (Gh, Gw), min-max scaled and bilinearly upsampled,
    as a size×size palette PNG. attn None: the image alone."""
    rgb = _to_rgb(image, size)
    if attn is not None:
        up = upsample_to_image(attn.detach().float().cpu(), size)  # (size, size)
        up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
        heat = colormaps[cmap](up.numpy())[..., :3]  # (size, size, 3)
        rgb = (1 - alpha) * rgb + alpha * heat
    buf = io.BytesIO()
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    img.quantize(256).save(buf, format="PNG", optimize=True)  # a 256-colour palette: about a third the bytes
    return buf.getvalue()


# ---- the analyses -----------------------------------------------------------------------------------
@dataclass
class ImageResult:
    name: str                                   # shown in the report (escaped there)
    image_uri: str
    top: list[tuple[str, float]]                # (label, probability), best first
    overlays: list[list[str]] = field(default_factory=list)  # [layer][head..., mean] → data URI
    rollout_uri: str | None = None


@dataclass
class Report:
    title: str
    images: list[ImageResult]
    layers: list[int]                           # attention-layer indices of the overlay table
    heads: int
    figures: dict[str, str]                     # caption → data URI (model-wide figures)
    notes: list[str] = field(default_factory=list)


def _stem(i: int, name: str) -> str:
    return f"{i:02d}_" + re.sub(r"[^\w.-]+", "_", Path(name).stem)[:40]


@torch.no_grad()
def explain(model: nn.Module, images: Tensor, names: Sequence[str], *, classes: Sequence[str] | None = None,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            layers: Sequence[int] | None = None, top_k: int = 5, overlay_size: int = 224,
            out_dir: str | Path | None = None, title: str = "vitkit explain") -> Report:
    """Run every analysis on images (B, C, H, W) in [0, 1] at the model's input size.

    mean/std: the model's normalisation. layers: attention-layer indices for the overlay table (all by
    default). out_dir: where to write the PNG figures (none written when None).
    """
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def save(fig, filename: str) -> str:
        png = png_bytes(fig)
        if out is not None:
            (out / filename).write_bytes(png)
        return data_uri(png)

    model.eval()
    x = EvalTransform(None, mean, std)(images) if mean is not None else images  # (B, C, H, W)
    logits = model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    probs = logits.softmax(dim=-1)  # (B, K)
    top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    classes = list(classes) if classes else [f"class {i}" for i in range(probs.shape[1])]
    notes: list[str] = []
    n_layers = len(attention_layers(model))
    layer_idx = [i % n_layers for i in (layers if layers is not None else range(n_layers))]
    _resolve_layers(model, layer_idx)  # range check with the library's message

    has_cls = getattr(model, "cls_token", None) is not None
    maps = roll = None
    if has_cls:
        maps = cls_attention(model, x, layer_idx)  # (L, B, H, Gh, Gw)
        roll = attention_rollout(model, x)          # (B, Gh, Gw)
    else:
        notes.append(f"{type(model).__name__} has no [CLS] token: the [CLS] attention overlays and the rollout "
                     f"are skipped (they read the [CLS] row of the attention).")
    heads = maps.shape[2] if maps is not None else 0

    results = []
    for b, name in enumerate(names):
        r = ImageResult(name=str(name), image_uri=data_uri(overlay_png(images[b], None, overlay_size)),
                        top=[(classes[i], float(p)) for p, i in zip(top.values[b].tolist(), top.indices[b].tolist())])
        if maps is not None:
            per_layer = torch.cat([maps[:, b], head_mean(maps)[:, b, None]], dim=1)  # (L, H + 1, Gh, Gw)
            r.overlays = [[data_uri(overlay_png(images[b], m, overlay_size)) for m in layer] for layer in per_layer]
            stem = _stem(b, str(name))
            save(plot_attention_overlay(images[b], head_mean(maps)[-1, b], [f"[CLS] layer {layer_idx[-1]}"]),
                 f"{stem}_cls_attention.png")
            r.rollout_uri = save(plot_attention_overlay(images[b], roll[b], ["rollout"]), f"{stem}_rollout.png")
        results.append(r)

    figures: dict[str, str] = {}
    analyses = [
        ("mean attention distance against depth (one dot per head)", "attention_distance.png",
         lambda: plot_attention_distance(mean_attention_distance(model, x))),
        ("position-embedding similarity", "pos_embed_similarity.png",
         lambda: plot_pos_embed_similarity(pos_embed_similarity(model))),
        ("principal components of the patch-embedding filters", "patch_embed_filters.png",
         lambda: _filters_figure(model)),
    ]
    for caption, filename, make in analyses:
        try:
            figures[caption] = save(make(), filename)
        except (ValueError, TypeError, AttributeError) as e:
            notes.append(f"{caption}: skipped ({e})")
    return Report(title=title, images=results, layers=layer_idx, heads=heads, figures=figures, notes=notes)


def _filters_figure(model: nn.Module):
    w = model.patch_embed.proj.weight  # (D, C, ph, pw)
    k = min(28, w.shape[0], w[0].numel())
    return plot_filters(patch_embed_filters(model, k))


# ---- HTML -------------------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
section{border-top:1px solid #ccc;padding:.8em 0}.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}figcaption{font-size:.85em;color:#555}img.px{image-rendering:pixelated}
.bar{background:#4a7fd4;height:1em}.bars td{padding:1px 6px;font-size:.9em}.note{color:#a35a00}
.controls{position:sticky;top:0;background:#fff;padding:.4em 0}"""

# Reads #layer=N&head=H on load, swaps every overlay on change, and writes the choice back to the address.
_JS = """const OVERLAYS = JSON.parse(document.getElementById('overlays').textContent);
const layerSel = document.getElementById('layer'), headSel = document.getElementById('head');
function show() {
  const l = layerSel.selectedIndex, h = headSel.selectedIndex;
  document.querySelectorAll('img.overlay').forEach((img, i) => { img.src = OVERLAYS[i][l][h]; });
  history.replaceState(null, '', '#layer=' + layerSel.value + '&head=' + headSel.value);
}
function fromHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  for (const [sel, key] of [[layerSel, 'layer'], [headSel, 'head']]) {
    const v = q.get(key);
    if (v !== null && [...sel.options].some(o => o.value === v)) sel.value = v;
  }
  show();
}
layerSel.addEventListener('change', show); headSel.addEventListener('change', show);
window.addEventListener('hashchange', fromHash); fromHash();"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page; every name and label passes through html.escape."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(report.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in report.notes]
    has_overlays = bool(report.images and report.images[0].overlays)
    if has_overlays:
        layer_opts = "".join(f'<option value="{n}"{" selected" if j == len(report.layers) - 1 else ""}>'
                             f'layer {n}</option>' for j, n in enumerate(report.layers))
        head_opts = "".join(f'<option value="{h}">head {h}</option>' for h in range(report.heads))
        head_opts += '<option value="mean" selected>mean</option>'
        parts.append(f'<div class="controls">[CLS] attention: <label>layer <select id="layer">{layer_opts}'
                     f'</select></label> <label>head <select id="head">{head_opts}</select></label></div>')
    for i, r in enumerate(report.images):
        bars = "".join(f'<tr><td>{e(label)}</td><td>{p:.3f}</td><td style="width:200px">'
                       f'<div class="bar" style="width:{100 * p:.1f}%"></div></td></tr>' for label, p in r.top)
        cells = [f'<figure><img class="px" src="{r.image_uri}" width="224" height="224" alt="input image">'
                 f'<figcaption>input</figcaption></figure>',
                 f'<figure><table class="bars">{bars}</table><figcaption>top-{len(r.top)} predictions</figcaption>'
                 f'</figure>']
        if r.overlays:
            oid = "overlay" if i == 0 else f"overlay-{i}"
            cells.append(f'<figure><img class="overlay" id="{oid}" src="{r.overlays[-1][-1]}" width="224" '
                         f'height="224" alt="[CLS] attention"><figcaption>[CLS] attention (selected layer, head)'
                         f'</figcaption></figure>')
        if r.rollout_uri:
            cells.append(f'<figure><img src="{r.rollout_uri}" alt="rollout" style="max-height:240px">'
                         f'<figcaption>attention rollout</figcaption></figure>')
        parts.append(f'<section><h2>{e(r.name)}</h2><div class="row">{"".join(cells)}</div></section>')
    if report.figures:
        parts.append("<section><h2>The model</h2><div class=\"row\">")
        parts += [f'<figure><img src="{uri}" alt="{e(cap)}" style="max-width:520px"><figcaption>{e(cap)}'
                  f'</figcaption></figure>' for cap, uri in report.figures.items()]
        parts.append("</div></section>")
    if has_overlays:
        table = json.dumps([r.overlays for r in report.images]).replace("<", "\\u003c")
        parts.append(f'<script id="overlays" type="application/json">{table}</script>')
        parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(report: Report, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
