"""Print, for each model vitkit and timm both register, the parameter counts and the max |Δlogit| between
timm's model (random weights) and vitkit's model loaded strictly from timm's state dict, at full size, in eval
mode and float32 on the CPU.

    PYTHONPATH=tests/timm_shim python benchmarks/parity_table.py [NAME_GLOB ...]

(tests/timm_shim stands in for torchvision, which timm imports and which has no CPU build here.)
"""
import fnmatch
import sys

import timm
import torch

import vitkit

DEFAULT = ["deit_*", "swin_*", "cait_*", "coatnet_*", "maxvit_*", "beit_base*", "convnext_*", "resnet*",
           "vit_small_r26_s32_224", "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random values in every tensor the state dict carries, so zero/one initial values (biases, norms, tokens,
    BatchNorm statistics) cannot hide a mistake. Buffers outside the state dict (timm's precomputed Swin masks,
    MaxViT's one-hot lookups) are left alone: they are derived, not loaded, so each library computes its own."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
                if key.endswith("running_var"):
                    t.abs_()  # a variance stays positive
    return model


def main(patterns: list[str]) -> None:
    names = [n for n in vitkit.list_models() if timm.is_model(n) and any(fnmatch.fnmatch(n, p) for p in patterns)]
    print(f"{'model':34} {'vitkit params':>14} {'timm params':>14} {'max |Δlogit|':>13}")
    for name in names:
        theirs = perturbed(timm.create_model(name, pretrained=False)).eval()
        ours = vitkit.create_model(name).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        size = ours.cfg.img_size if isinstance(ours.cfg.img_size, int) else ours.cfg.img_size[0]
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            diff = (ours(x) - theirs(x)).abs().max().item()
        n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
        print(f"{name:34} {n_ours:>14,} {n_theirs:>14,} {diff:>13.2e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
