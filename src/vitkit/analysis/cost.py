"""The cost of a Vision Transformer: parameters, FLOPs and attention memory, by component.

Conventions, stated once:
  * FLOPs: a multiply-add counts as 2 FLOPs (as `torch.utils.flop_counter.FlopCounterMode`). Only the matrix
    products are counted: patch embedding, q/k/v and output projections, QKᵀ and AV, MLP, head. LayerNorm,
    softmax, GELU, bias adds and residual adds are not (they are O(N·D) and FlopCounterMode skips them too).
  * Bytes: B (bytes), KiB = 1024 B, MiB = 1024² B, GiB = 1024³ B. The lecture's "150 KB", "112 MB" and
    "768 GB" are binary units (KiB, MiB, GiB); `lecture_figures` shows the arithmetic.
  * N counts every token the attention sees: patches plus prefix tokens ([CLS], registers, DeiT's
    distillation token). `patch_only` figures count the Hp·Wp patch tokens alone, as the lecture slides do.

Counting builds the model on the meta device: shapes only, no memory, no time.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..registry import create_model

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# The lecture's running example: a 48-layer model with 16 heads per layer (not a registered ViT; ViT-H/14
# has 32 layers × 16 heads), on 224×224 images cut into 16×16 patches (14×14 = 196 tokens).
LECTURE_LAYERS, LECTURE_HEADS = 48, 16


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[dtype]


def build_meta(name: str, **overrides) -> nn.Module:
    """The named model on the meta device (shapes only). Unknown names raise registry's KeyError."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def _is_vit(model: nn.Module) -> bool:
    from ..models.vit import VisionTransformer
    from ..layers import Attention, Block, PatchEmbed
    return (isinstance(model, VisionTransformer) and isinstance(model.patch_embed, PatchEmbed)
            and all(type(b) is Block and type(b.attn) is Attention for b in model.blocks))


# ---- parameters -------------------------------------------------------------------------------------
PARAM_COMPONENTS = ("patch_embed", "pos_embed_tokens", "attn_qkv", "attn_proj", "mlp", "norms", "layer_scale",
                    "head", "other")


def _param_component(name: str) -> str:
    """Which component a parameter belongs to, from its (timm-style) state-dict key."""
    parts = name.split(".")
    if parts[0] == "patch_embed":
        return "patch_embed"
    if parts[0] in ("pos_embed", "cls_token", "reg_token", "dist_token"):
        return "pos_embed_tokens"
    if parts[0] in ("head", "head_dist", "pre_logits"):
        return "head"
    if parts[0] in ("norm", "fc_norm"):
        return "norms"
    if parts[0] == "blocks" and len(parts) > 2:
        sub = parts[2]
        if sub == "attn":
            return "attn_qkv" if parts[3] in ("qkv", "q", "kv") else "attn_proj" if parts[3] == "proj" else "other"
        if sub == "mlp":
            return "mlp"
        if sub.startswith("norm"):
            return "norms"
        if sub.startswith("ls"):
            return "layer_scale"
    return "other"


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters by component (PARAM_COMPONENTS) plus 'total' = sum(p.numel()). Any model works; names a
    ViT-family model does not use land in 'other'."""
    out = dict.fromkeys(PARAM_COMPONENTS, 0)
    for name, p in model.named_parameters():
        out[_param_component(name)] += p.numel()
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


# ---- geometry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViTShape:
    """The numbers the cost formulas need, read from a built ViT-family model."""
    patches: int        # Hp·Wp patch tokens
    prefix: int         # [CLS] + registers (+ distillation token)
    dim: int            # D
    depth: int          # encoder blocks
    heads: int          # H
    mlp_hidden: int     # MLP hidden width
    patch_in: int       # C·P·P: inputs per patch
    heads_out: int      # total head outputs (2 heads for distilled DeiT), counted on pooled tokens
    pre_logits: int     # pre-logits layer width, or 0

    @property
    def tokens(self) -> int:
        return self.patches + self.prefix


def vit_shape(model: nn.Module) -> ViTShape:
    if not _is_vit(model):
        raise TypeError(f"the FLOP and memory model covers ViT-family models (ViT, DeiT) only; got "
                        f"{type(model).__name__}. Parameters are still counted by count_params")
    pe, blk = model.patch_embed, model.blocks[0]
    heads = sum(m.out_features for m in (model.head, getattr(model, "head_dist", None)) if isinstance(m, nn.Linear))
    pre = model.pre_logits.fc.out_features if isinstance(model.pre_logits, nn.Sequential) else 0
    return ViTShape(patches=pe.num_patches, prefix=model.num_prefix_tokens, dim=model.embed_dim,
                    depth=len(model.blocks), heads=blk.attn.num_heads, mlp_hidden=blk.mlp.fc1.out_features,
                    patch_in=pe.proj.in_channels * pe.proj.kernel_size[0] * pe.proj.kernel_size[1],
                    heads_out=heads, pre_logits=pre)


# ---- FLOPs ------------------------------------------------------------------------------------------
def count_flops(model: nn.Module) -> dict[str, int]:
    """FLOPs for one image by component (multiply-add = 2 FLOPs), plus 'total'. ViT family only."""
    s = vit_shape(model)
    N, D, L = s.tokens, s.dim, s.depth
    head_in = s.pre_logits or D                      # the heads read the pre-logits output when there is one
    head = 2 * D * s.pre_logits + 2 * head_in * s.heads_out
    out = {
        "patch_embed": 2 * s.patches * s.patch_in * D,      # one (C·P²) → D product per patch
        "attn_qkv": L * 2 * N * D * 3 * D,                  # (N, D) @ (D, 3D)
        "attn_qk": L * 2 * N * N * D,                       # H × (N, hd) @ (hd, N); H·hd = D
        "attn_av": L * 2 * N * N * D,                       # H × (N, N) @ (N, hd)
        "attn_proj": L * 2 * N * D * D,                     # (N, D) @ (D, D)
        "mlp": L * 2 * N * D * s.mlp_hidden * 2,            # fc1 and fc2
        "head": head,                                       # on the pooled token(s) only
    }
    out["total"] = sum(out.values())
    return out


def measured_flops(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> int:
    """FLOPs of one forward of a real (not meta) model on one image, by FlopCounterMode, with every attention
    module on the explicit path (two matmuls, which the counter sees)."""
    from torch.utils.flop_counter import FlopCounterMode
    from ..layers import record_attention
    pe = model.patch_embed
    h, w = pe.img_size if img_size is None else ((img_size, img_size) if isinstance(img_size, int) else img_size)
    x = torch.zeros(1, pe.proj.in_channels, h, w)
    model.eval()
    with torch.no_grad(), record_attention(model), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


# ---- attention memory -------------------------------------------------------------------------------
def attention_matrix_memory(tokens: int, heads: int, layers: int, bytes_per: int = 4, batch: int = 1) -> dict:
    """Memory of the N×N attention matrices (softmax output) when they are stored, and of the fused case.

    entries_per_matrix = N²; per layer: heads·N²; total: layers·heads·N², each × batch and × bytes.
    Fused attention (flash / memory-efficient kernels) never stores an N×N matrix: it keeps the output
    (N × D, counted with the activations) and one fp32 log-sum-exp per query per head: heads·N·4 bytes per
    layer, linear in N.
    """
    n2 = tokens * tokens
    per_matrix = n2 * bytes_per
    return {
        "tokens": tokens, "heads": heads, "layers": layers, "bytes_per_entry": bytes_per, "batch": batch,
        "entries_per_matrix": n2,
        "bytes_per_matrix": per_matrix,
        "bytes_per_layer": batch * heads * per_matrix,
        "bytes_total": batch * layers * heads * per_matrix,
        "fused_bytes_per_layer": batch * heads * tokens * 4,
        "fused_bytes_total": batch * layers * heads * tokens * 4,
    }


def activation_memory(model: nn.Module, batch: int = 1, bytes_per: int = 4, fused: bool = False) -> dict:
    """Activations saved for the backward pass of the encoder, a simple model stated here.

    Per block and image it keeps: LN1 input (N·D), q, k, v (3·N·D), the attention output that enters the
    projection (N·D), LN2 input (N·D), fc1 output and GELU output (2·N·hidden): N·(6·D + 2·hidden) entries;
    plus the softmax output H·N² (explicit attention) or the fp32 log-sum-exp H·N (fused attention). No
    dropout masks (dropout off), patch embedding and head ignored (small next to the blocks).
    """
    s = vit_shape(model)
    N = s.tokens
    linear = N * (6 * s.dim + 2 * s.mlp_hidden) * bytes_per
    attn = s.heads * N * 4 if fused else s.heads * N * N * bytes_per
    per_block = linear + attn
    return {"batch": batch, "fused": fused, "bytes_per_block": batch * per_block,
            "bytes_total": batch * s.depth * per_block, "bytes_attention_matrices": batch * s.depth * attn}


# ---- the complexity table (Vaswani et al. 2017, Table 1) -------------------------------------------
def complexity_table(n: int, d: int, k: int = 3, r: int = 16) -> list[dict]:
    """The per-layer complexity, sequential operations and maximum path length of each layer type, evaluated
    for sequence length n, width d, kernel size k and neighbourhood r (restricted self-attention)."""
    return [
        {"layer": "self-attention", "complexity": n * n * d, "complexity_O": "n²·d",
         "sequential_ops": 1, "sequential_O": "1", "max_path": 1, "max_path_O": "1"},
        {"layer": "recurrent", "complexity": n * d * d, "complexity_O": "n·d²",
         "sequential_ops": n, "sequential_O": "n", "max_path": n, "max_path_O": "n"},
        {"layer": "convolutional", "complexity": k * n * d * d, "complexity_O": "k·n·d²",
         "sequential_ops": 1, "sequential_O": "1", "max_path": math.log(n, k), "max_path_O": "log_k(n)"},
        {"layer": "self-attention (restricted)", "complexity": r * n * d, "complexity_O": "r·n·d",
         "sequential_ops": 1, "sequential_O": "1", "max_path": n / r, "max_path_O": "n/r"},
    ]


# ---- the lecture's figures --------------------------------------------------------------------------
def lecture_figures(layers: int = LECTURE_LAYERS, heads: int = LECTURE_HEADS) -> dict:
    """The attention-memory figures from the lecture slides, computed (fp32, batch 1).

    ViT-B/16 at 224: 14×14 = 196 patch tokens → 196² = 14⁴ = 38,416 entries per matrix × 4 B = 153,664 B
      = 150.06 KiB: the slides' "≈150 KB" is KiB (decimal it would be 153.7 kB). With [CLS]: 197² = 38,809.
    48 layers × 16 heads × 153,664 B = 118,013,952 B = 112.55 MiB: the slides' "112 MB" is MiB, truncated
      (decimal it would be 118.0 MB).
    Attention over the pixels of a 128×128 image: N = 16,384, N² = 268,435,456 entries × 4 B = 2³⁰ B = 1 GiB
      per matrix; × 48 layers × 16 heads = 768 GiB: the slides' "768 GB" is GiB (decimal 824.6 GB).
    Swin's 4×4 patches on a 224 image: 56×56 = 3,136 tokens, 3,136² = 9,834,496 ≈ 9.8 M entries per matrix
      if attention were global (Swin's 7×7 windows bring it to 49² per window).
    """
    vit = attention_matrix_memory(196, heads, layers)
    vit_cls = attention_matrix_memory(197, heads, layers)
    pixels = attention_matrix_memory(128 * 128, heads, layers)
    swin = attention_matrix_memory(56 * 56, heads, layers)
    return {
        "layers": layers, "heads": heads, "dtype": "fp32",
        "vit_patch16_224_patch_only": {
            **vit, "KiB_per_matrix": vit["bytes_per_matrix"] / KiB, "MiB_total": vit["bytes_total"] / MiB},
        "vit_patch16_224_with_cls": {
            **vit_cls, "KiB_per_matrix": vit_cls["bytes_per_matrix"] / KiB,
            "MiB_total": vit_cls["bytes_total"] / MiB},
        "pixels_128x128": {
            **pixels, "GiB_per_matrix": pixels["bytes_per_matrix"] / GiB, "GiB_total": pixels["bytes_total"] / GiB},
        "swin_patch4_224_global": {**swin, "M_entries_per_matrix": swin["entries_per_matrix"] / 1e6},
    }


# ---- everything, for one model ----------------------------------------------------------------------
@dataclass
class CostReport:
    model: str
    img_size: int | tuple[int, int] | None
    batch: int
    dtype: str
    params: dict
    flops: dict | None           # None for models outside the ViT family
    attention: dict | None       # with [CLS] and other prefix tokens
    attention_patch_only: dict | None
    activations: dict | None
    activations_fused: dict | None
    lecture: dict
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def cost_report(name: str, *, img_size: int | None = None, batch: int = 1, dtype: str = "fp32",
                layers: int | None = None, heads: int | None = None) -> CostReport:
    """Parameters, FLOPs and attention memory of a registered model, counted on the meta device.

    layers / heads: override the model's depth and head count in the attention-memory figures (e.g. 48 and
    16 to get the lecture's 112 MiB from a 196-token ViT-B/16).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    nbytes = dtype_bytes(dtype)
    model = build_meta(name, **({"img_size": img_size} if img_size is not None else {}))
    params = count_params(model)
    lecture = lecture_figures()
    if not _is_vit(model):
        return CostReport(name, img_size, batch, dtype, params, None, None, None, None, None, lecture,
                          note=f"FLOPs and attention memory cover ViT-family models only; {name} is a "
                               f"{type(model).__name__}, so only parameters are counted")
    s = vit_shape(model)
    L, H = layers or s.depth, heads or s.heads
    return CostReport(
        name, img_size or getattr(model.cfg, "img_size", None), batch, dtype, params, count_flops(model),
        attention_matrix_memory(s.tokens, H, L, nbytes, batch),
        attention_matrix_memory(s.patches, H, L, nbytes, batch),
        activation_memory(model, batch, nbytes), activation_memory(model, batch, nbytes, fused=True), lecture,
        note="FLOPs per image, multiply-add = 2 FLOPs, matmuls only; bytes in binary units (KiB/MiB/GiB)")


def human_bytes(n: float) -> str:
    """Binary units: 153,664 → '150.06 KiB'."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"
