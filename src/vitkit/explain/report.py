"""A self-contained HTML report of what a ViT attends to, plus the figures as PNG files.

    explain(model, images, names, classes=..., mean=..., std=..., out_dir=...)     → Report (a classifier)
    explain_caption(model, images, names, vocab=..., max_len=..., out_dir=...)    → Report (a captioner)
    write_report(report, out_dir)                                                 → report.html path

The report holds every image inline as a base64 data URI (no network, no external JS or CSS). Per input
image: the image, the top-k prediction bars, the [CLS] attention overlay with a layer selector
(<select id="layer">) and a head selector (<select id="head">, heads and "mean") that swap the overlay
from a precomputed JSON table (<script id="overlays">: [image][layer][head..., mean] → data URI), and the
rollout overlay. For the model: mean attention distance against depth, position-embedding similarity and
the principal patch-embedding filters. The page reads `#layer=N&head=H` (H an index or "mean") on load,
so a link can open it at a given layer and head; changing a selector updates the address.

Panels a model cannot give (no [CLS] token, no absolute position embedding) are skipped with a note.

A captioner's report (models/captioner.py) has no layer or head selector: per image, its greedy caption, its
tokens, and the cross-attention of the step that wrote each token (EOS included where emitted; the decoder's
last layer averaged over heads, as `align` gives it) drawn over the image at the image's aspect, with one token
selector (<select id="token">, values 1 … the longest caption's length) that swaps the overlay of every card
from <script id="token-overlays"> ([image][token] → data URI; a card whose caption is shorter shows the input
alone). The page reads `#token=T` on load. The model-wide figures are its image encoder's, where that is a ViT.
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
from ..data.sequences import Vocabulary
from .attention import _resolve_layers, attention_layers, attention_rollout, cls_attention, head_mean, \
    mean_attention_distance, upsample_to_image
from .caption import caption_attention
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


def _to_rgb(image: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) in any range → (h, w, 3) float in [0, 1] for size (h, w), min-max scaled, nearest-upsampled."""
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    img = img[:1].expand(3, -1, -1) if img.shape[0] == 1 else img[:3]  # (3, H, W)
    img = torch.nn.functional.interpolate(img[None], size=size, mode="nearest")[0]
    return img.permute(1, 2, 0).numpy()  # (h, w, 3)


def display_size(height: int, width: int, size: int = 224) -> tuple[int, int]:
    """(h, w) with the image's aspect and the area of a size×size square: 28×112 at 224 → 112×448."""
    scale = size / (height * width) ** 0.5
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_png(image: Tensor, attn: Tensor | None, size: int | tuple[int, int] = 224,
                alpha: float = 0.55, cmap: str = "jet") -> bytes:
    """One image (C, H, W) under one attention map (Gh, Gw), min-max scaled and bilinearly upsampled, as a
    palette PNG of size (h, w), or size×size for an int. attn None: the image alone."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    rgb = _to_rgb(image, size)
    if attn is not None:
        up = upsample_to_image(attn.detach().float().cpu(), size)  # (h, w)
        up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
        heat = colormaps[cmap](up.numpy())[..., :3]  # (h, w, 3)
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
    caption: str | None = None                  # a captioner's greedy caption (None: a classifier's report)
    tokens: list[str] = field(default_factory=list)          # the generated tokens, EOS included where emitted
    token_overlays: list[str] = field(default_factory=list)  # [token] → data URI of its cross-attention
    size: tuple[int, int] = (224, 224)          # (h, w) the image and its overlays are drawn at


@dataclass
class Report:
    title: str
    images: list[ImageResult]
    layers: list[int]                           # attention-layer indices of the overlay table
    heads: int
    figures: dict[str, str]                     # caption → data URI (model-wide figures)
    notes: list[str] = field(default_factory=list)
    captions: bool = False                      # a captioner's report: a token selector, no layer/head ones


def _saver(out_dir: str | Path | None):
    """save(figure or PNG bytes, filename) → its data URI, writing the PNG into out_dir (made here) unless None."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def save(fig, filename: str) -> str:
        png = fig if isinstance(fig, bytes) else png_bytes(fig)
        if out is not None:
            (out / filename).write_bytes(png)
        return data_uri(png)
    return save


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
    save = _saver(out_dir)
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

    figures = _model_figures(model, x, save, notes)
    return Report(title=title, images=results, layers=layer_idx, heads=heads, figures=figures, notes=notes)


def _model_figures(model: nn.Module, x: Tensor, save, notes: list[str], prefix: str = "") -> dict[str, str]:
    """The model-wide figures (caption → data URI), each saved by save(fig, filename); one that the model
    cannot give is skipped with a note."""
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
            figures[prefix + caption] = save(make(), filename)
        except (ValueError, TypeError, AttributeError) as e:
            notes.append(f"{prefix}{caption}: skipped ({e})")
    return figures


@torch.no_grad()
def explain_caption(model: nn.Module, images: Tensor, names: Sequence[str], *, vocab: Vocabulary,
                    max_len: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    overlay_size: int = 224, out_dir: str | Path | None = None,
                    title: str = "vitkit explain") -> Report:
    """A captioner's report: per image (B, C, H, W) in [0, 1] at the model's input size, its greedy caption
    (at most max_len tokens) and, for each generated token (EOS included where emitted), the cross-attention
    of the step that wrote it drawn over the image (`caption_attention`: the decoder's last layer, averaged
    over heads; there is no layer or head choice, so the report has a token selector instead of those).

    vocab: the run's vocabulary (the caption is vocab.decode of the ids, as `vitkit caption` prints it).
    mean/std: the model's normalisation. out_dir: where to write one overlay PNG per image and token
    ({stem}_token{t}_cross_attention.png, t from 1: the report's pictures) and the image encoder's figures
    where it is a ViT (none written when None).
    """
    save = _saver(out_dir)
    model.eval()
    x = EvalTransform(None, mean, std)(images) if mean is not None else images  # (B, C, H, W)
    size = display_size(*images.shape[-2:], overlay_size)
    results = []
    for b, (ids, maps) in enumerate(caption_attention(model, x, max_len)):
        name, stem = str(names[b]), _stem(b, str(names[b]))
        results.append(ImageResult(
            name=name, image_uri=data_uri(overlay_png(images[b], None, size)), top=[], caption=vocab.decode(ids),
            tokens=[vocab.tokens[i] if i < len(vocab) else "<unk>" for i in ids], size=size,
            token_overlays=[save(overlay_png(images[b], m, size), f"{stem}_token{t + 1}_cross_attention.png")
                            for t, m in enumerate(maps)]))
    notes: list[str] = []
    encoder = getattr(model, "encoder", None)
    if getattr(encoder, "patch_embed", None) is not None:
        figures = _model_figures(encoder, x, save, notes, prefix="image encoder: ")
    else:
        figures = {}
        notes.append(f"{type(model).__name__}'s image encoder is no ViT: the attention-distance, position-embedding "
                     f"and patch-filter figures are skipped.")
    return Report(title=title, images=results, layers=[], heads=0, figures=figures, notes=notes, captions=True)


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
_TOKEN_CSS = "\n.tok{padding:0 .25em;border-radius:3px;font-family:monospace}.tok.sel{background:#ffd54a}"

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

# A captioner's report: reads #token=T on load, shows token T's overlay on every card (the input image alone where
# that caption is shorter), marks the token in each caption, and writes the choice back to the address.
_TOKEN_JS = """const OVERLAYS = JSON.parse(document.getElementById('token-overlays').textContent);
const tokenSel = document.getElementById('token');
function show() {
  const t = tokenSel.selectedIndex;
  document.querySelectorAll('section.card').forEach((card, i) => {
    const toks = card.querySelectorAll('.tok'), has = t < OVERLAYS[i].length;
    card.querySelector('img.overlay').src = has ? OVERLAYS[i][t] : card.querySelector('img.px').src;
    toks.forEach((s, j) => s.classList.toggle('sel', j === t));
    card.querySelector('.writing').textContent = has
      ? 'cross-attention writing token ' + (t + 1) + ': ' + toks[t].textContent
      : 'the caption has no token ' + (t + 1);
  });
  [...tokenSel.options].forEach(o => o.toggleAttribute('selected', o.selected));  // the markup follows the choice
  history.replaceState(null, '', '#token=' + tokenSel.value);
}
function fromHash() {
  const v = new URLSearchParams(location.hash.slice(1)).get('token');
  if (v !== null && [...tokenSel.options].some(o => o.value === v)) tokenSel.value = v;
  show();
}
tokenSel.addEventListener('change', show);
window.addEventListener('hashchange', fromHash); fromHash();"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page; every name and label passes through html.escape."""
    e = html.escape
    css = _CSS + (_TOKEN_CSS if report.captions else "")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(report.title)}</title>",
             f"<style>{css}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in report.notes]
    if report.captions:
        parts += _caption_cards(report)
    else:
        parts += _classifier_cards(report)
    if report.figures:
        parts.append("<section><h2>The model</h2><div class=\"row\">")
        parts += [f'<figure><img src="{uri}" alt="{e(cap)}" style="max-width:520px"><figcaption>{e(cap)}'
                  f'</figcaption></figure>' for cap, uri in report.figures.items()]
        parts.append("</div></section>")
    if report.captions and any(r.tokens for r in report.images):
        table = json.dumps([r.token_overlays for r in report.images]).replace("<", "\\u003c")
        parts.append(f'<script id="token-overlays" type="application/json">{table}</script>')
        parts.append(f"<script>{_TOKEN_JS}</script>")
    elif report.images and report.images[0].overlays:
        table = json.dumps([r.overlays for r in report.images]).replace("<", "\\u003c")
        parts.append(f'<script id="overlays" type="application/json">{table}</script>')
        parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _classifier_cards(report: Report) -> list[str]:
    """The layer and head selectors, then per image: the input, the top-k bars, the [CLS] overlay, the rollout."""
    e, parts = html.escape, []
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
    return parts


def _caption_cards(report: Report) -> list[str]:
    """The token selector (one option per token of the longest caption: '1: 7' … for one image, 'token 1' …
    for several), then per image: its caption, its tokens (the selected one marked), the input and the
    selected token's cross-attention overlay."""
    e, parts = html.escape, []
    longest = max((len(r.tokens) for r in report.images), default=0)
    if longest:
        only = report.images[0].tokens if len(report.images) == 1 else None
        opts = "".join(f'<option value="{t + 1}"{" selected" if t == 0 else ""}>'
                       f'{f"{t + 1}: {e(only[t])}" if only else f"token {t + 1}"}</option>' for t in range(longest))
        parts.append(f'<div class="controls"><label>cross-attention of token <select id="token">{opts}</select>'
                     f'</label> (the decoder\'s last layer, averaged over heads)</div>')
    for i, r in enumerate(report.images):
        h, w = r.size
        oid = "overlay" if i == 0 else f"overlay-{i}"
        tokens = " ".join(f'<span class="tok{" sel" if t == 0 else ""}">{e(tok)}</span>'
                          for t, tok in enumerate(r.tokens))
        first, src = (f"cross-attention writing token 1: {e(r.tokens[0])}", r.token_overlays[0]) if r.tokens \
            else ("no tokens", r.image_uri)
        cells = [f'<figure><img class="px" src="{r.image_uri}" width="{w}" height="{h}" alt="input image">'
                 f'<figcaption>input</figcaption></figure>',
                 f'<figure><img class="overlay" id="{oid}" src="{src}" width="{w}" height="{h}" '
                 f'alt="cross-attention"><figcaption class="writing">{first}</figcaption></figure>']
        caption = f'<q class="caption">{e(r.caption)}</q>' if r.caption else "<em>(empty)</em>"
        parts.append(f'<section class="card"><h2>{e(r.name)}</h2><p>caption: {caption} &middot; tokens: {tokens}</p>'
                     f'<div class="row">{"".join(cells)}</div></section>')
    return parts


def write_report(report: Report, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
