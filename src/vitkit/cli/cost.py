"""`vitkit cost`: parameters, FLOPs and attention memory of a model, by component."""
from __future__ import annotations

import json

from ..analysis.cost import DTYPE_BYTES, cost_report, human_bytes


def add_parser(sub, name):
    p = sub.add_parser(name, help="parameters, FLOPs and attention memory of a model",
                       description="Count a model's parameters, FLOPs (one image; multiply-add = 2 FLOPs) and "
                                   "attention memory by component, on the meta device (instant). Bytes are in "
                                   "binary units (KiB, MiB, GiB). The lecture's figures (150 KB, 112 MB, 768 GB) "
                                   "are printed too.")
    p.add_argument("model", help="a registered model name, e.g. vit_base_patch16_224")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size for the memory figures (default: 1)")
    p.add_argument("--dtype", choices=list(DTYPE_BYTES), default="fp32", help="storage type (default: fp32)")
    p.add_argument("--layers", type=int, help="layers to assume in the attention memory (default: the model's)")
    p.add_argument("--heads", type=int, help="heads to assume in the attention memory (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args) -> int:
    report = cost_report(args.model, img_size=args.img_size, batch=args.batch, dtype=args.dtype,
                         layers=args.layers, heads=args.heads)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.model}  (img_size {report.img_size}, batch {report.batch}, {report.dtype})")
    print("\nparameters")
    for k, v in report.params.items():
        if v or k == "total":
            print(f"  {k:<18}{v:>16,}")
    if report.flops is None:
        print(f"\n{report.note}")
        return 0
    print("\nFLOPs per image (multiply-add = 2 FLOPs)")
    for k, v in report.flops.items():
        print(f"  {k:<18}{v:>16,}")
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
