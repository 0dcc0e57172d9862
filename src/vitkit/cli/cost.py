"""`vitkit cost`: parameters, FLOPs and attention memory of a model, by component."""
from __future__ import annotations

import json

DTYPES = ("fp32", "bf16", "fp16")  # analysis.cost.DTYPE_BYTES's keys (a test checks), here to keep --help light
LECTURE_PATCHES = 196  # the lecture's running example: 224×224 images in 16×16 patches, 14×14 patch tokens


def add_parser(sub, name):
    p = sub.add_parser(name, help="parameters, FLOPs and attention memory of a model",
                       description="Count a model's parameters, FLOPs (one image; multiply-add = 2 FLOPs) and "
                                   "attention memory by component, on the meta device (instant). Bytes are in "
                                   "binary units (KiB, MiB, GiB). The lecture's figures (150 KB, 112 MB, 768 GB) "
                                   "are printed for its running example (a ViT with 196 patch tokens, e.g. "
                                   "ViT-B/16 at 224), or with --lecture.")
    p.add_argument("model", help="a registered model name, e.g. vit_base_patch16_224")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size for the memory figures (default: 1)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="storage type (default: fp32)")
    p.add_argument("--layers", type=int, help="layers to assume in the attention memory (default: the model's)")
    p.add_argument("--heads", type=int, help="heads to assume in the attention memory (default: the model's)")
    p.add_argument("--lecture", action="store_true", help="print the lecture's figures whatever the model")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def flops_unit(n: float) -> tuple[str, float]:
    """The unit a count reads best in: 35,127,656,448 → ('GFLOPs', 1e9); small models get MFLOPs or kFLOPs."""
    for unit, size in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if n >= size:
            return unit, size
    return "FLOPs", 1.0


def lecture_applies(report) -> bool:
    """Whether the lecture's running example is this model: a ViT-family model with 196 patch tokens."""
    a = report.attention_patch_only
    return a is not None and a["tokens"] == LECTURE_PATCHES


def run(args) -> int:
    from ..analysis.cost import cost_report, human_bytes

    report = cost_report(args.model, img_size=args.img_size, batch=args.batch, dtype=args.dtype,
                         layers=args.layers, heads=args.heads)
    lecture = args.lecture or lecture_applies(report)
    if args.json:
        print(json.dumps({**report.to_dict(), "lecture": report.lecture if lecture else None}, indent=2))
        return 0
    print(f"{report.model}  (img_size {report.img_size}, batch {report.batch}, {report.dtype})")
    print("\nparameters")
    for k, v in report.params.items():
        if v or k == "total":
            print(f"  {k:<18}{v:>16,}")
    if report.flops is None:
        print(f"\n{report.note}")
        return 0
    total = report.flops["total"]
    unit, size = flops_unit(total)  # one unit for the table, the total's
    print(f"\n{unit} per image (multiply-add = 2 FLOPs)")
    for k, v in report.flops.items():
        share = f"{100 * v / total:6.1f}%" if total and k != "total" else f"  ({v:,} FLOPs)"
        print(f"  {k:<18}{v / size:>12,.3f} {unit}  {share}")
    print("\nattention matrices (softmax output, stored)")
    for label, a in (("with prefix tokens", report.attention), ("patch tokens only", report.attention_patch_only)):
        print(f"  {label}: N = {a['tokens']}, N² = {a['entries_per_matrix']:,} entries, "
              f"{human_bytes(a['bytes_per_matrix'])} per matrix, {human_bytes(a['bytes_per_layer'])} per layer "
              f"({a['heads']} heads × batch {a['batch']}), {human_bytes(a['bytes_total'])} for {a['layers']} "
              f"layers; fused: {human_bytes(a['fused_bytes_total'])}")
    act, fused = report.activations, report.activations_fused
    print(f"\nactivations saved for backward: {human_bytes(act['bytes_total'])} "
          f"(of which attention matrices {human_bytes(act['bytes_attention_matrices'])}); "
          f"with fused attention {human_bytes(fused['bytes_total'])}")
    if not lecture:
        print(f"\n(the lecture's figures are for a ViT with {LECTURE_PATCHES} patch tokens; --lecture prints them)")
        return 0
    lec = report.lecture
    v, p, s = lec["vit_patch16_224_patch_only"], lec["pixels_128x128"], lec["swin_patch4_224_global"]
    print(f"\nlecture figures (fp32, {lec['layers']} layers × {lec['heads']} heads)")
    print(f"  196 patch tokens: {v['entries_per_matrix']:,} entries, {human_bytes(v['bytes_per_matrix'])} per matrix, "
          f"{human_bytes(v['bytes_total'])} in all  (slides: 38,416, ≈150 KB, 112 MB)")
    print(f"  with [CLS]: {lec['vit_patch16_224_with_cls']['entries_per_matrix']:,} entries")
    print(f"  128×128 pixels as tokens: {p['entries_per_matrix']:,} entries, {human_bytes(p['bytes_per_matrix'])} "
          f"per matrix, {human_bytes(p['bytes_total'])} in all  (slides: 768 GB)")
    print(f"  Swin 4×4 patches at 224: {s['tokens']:,} tokens, {s['entries_per_matrix']:,} entries per matrix "
          f"before windows")
    return 0
