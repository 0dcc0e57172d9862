"""vitkit.explain: [CLS] maps, rollout, gradient rollout, attention distance, embeddings, Swin maps, plots."""
from __future__ import annotations

import io
import math

import pytest
import torch

import vitkit
import vitkit.layers.attention as attention_mod
from vitkit.explain import (
    attention_distance,
    attention_layers,
    attention_rollout,
    cls_attention,
    discard_lowest,
    grad_rollout,
    head_mean,
    mean_attention_distance,
    patch_embed_filters,
    pos_embed_similarity,
    upsample_to_image,
    window_attention_maps,
)
from vitkit.layers.attention import record_attention

SMALL = dict(embed_dim=32, depth=3, num_heads=2, num_classes=5)


def _vit(**kw):
    return vitkit.create_model("vit_tiny_patch16_224", **{**SMALL, "img_size": 64, **kw}).eval()


def _deit(**kw):
    """Two prefix tokens ([CLS], distillation) and a non-square 3×5 grid."""
    return vitkit.create_model("deit_tiny_distilled_patch16_224", **{**SMALL, "img_size": (48, 80), **kw}).eval()


def _sharpen(model, gain=8.0):
    """Random-init ViTs attend almost uniformly; scaling q/k makes the maps (and the tests) discriminating."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.weight"):
                p.mul_(gain)
            if name.startswith("head"):
                p.mul_(50.0)
    return model


# ---- [CLS] attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, prefix", [(_vit, 1), (lambda: _vit(reg_tokens=3), 4), (_deit, 2)])
def test_cls_attention_reads_cls_row_over_patches(make, prefix):
    model = _sharpen(make())
    assert model.num_prefix_tokens == prefix
    x = torch.randn(2, 3, *model.patch_embed.img_size)
    Gh, Gw = model.patch_embed.grid_size
    maps = cls_attention(model, x, layers=[0, "blocks.2.attn"], heads=[1])
    assert maps.shape == (2, 2, 1, Gh, Gw)
    with torch.no_grad(), record_attention(model, ["blocks.2.attn"]) as rec:
        model(x)
    w = rec.maps["blocks.2.attn"][0]  # (B, H, N, N)
    torch.testing.assert_close(maps[1, :, 0].flatten(1), w[:, 1, 0, prefix:], rtol=0, atol=1e-6)
    # what [CLS] gives the prefix tokens plus the map is the whole row
    torch.testing.assert_close(maps[1, :, 0].sum((-2, -1)) + w[:, 1, 0, :prefix].sum(-1), torch.ones(2))
    assert head_mean(cls_attention(model, x)).shape == (3, 2, Gh, Gw)


def test_upsample_to_image():
    maps = torch.arange(12.0).reshape(1, 2, 2, 3)  # (..., Gh, Gw)
    up = upsample_to_image(maps, (32, 48), mode="nearest")
    assert up.shape == (1, 2, 32, 48)
    torch.testing.assert_close(up[0, 1, ::16, ::16], maps[0, 1])
    assert upsample_to_image(torch.ones(3, 4, 4), 64).sub(1).abs().max() < 1e-6


def test_cls_attention_refuses_models_without_cls():
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        cls_attention(_vit(class_token=False, global_pool="avg"), torch.randn(1, 3, 64, 64))


# ---- rollout ---------------------------------------------------------------------------------------------
def test_discard_lowest_is_per_image_and_spares_cls_column():
    fused = torch.rand(2, 4, 4) + 0.1
    fused[:, :, 0] = 0.0  # the [CLS] column holds the smallest entries, yet is kept
    fused[1] *= 100.0  # a batch-wide threshold would wipe image 0 out
    out = discard_lowest(fused, 0.5)  # floor(0.5 · 4 · 3) = 6 entries per image
    for b in range(2):
        kept = out[b, :, 1:]
        assert (kept == 0).sum() == 6
        assert kept[kept > 0].min() >= fused[b, :, 1:][kept == 0].max()
        torch.testing.assert_close(out[b], discard_lowest(fused[b:b + 1], 0.5)[0])
    torch.testing.assert_close(out[:, :, 0], fused[:, :, 0])


def test_rollout_one_layer_by_hand():
    model = _sharpen(_vit(depth=1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), record_attention(model) as rec:
        model(x)
    a = rec.maps["blocks.0.attn"][0].amax(dim=1).double() + torch.eye(17)  # max fusion + residual
    a = a / a.sum(-1, keepdim=True)
    want = a[:, 0, 1:].reshape(2, 4, 4).float()
    torch.testing.assert_close(attention_rollout(model, x, head_fusion="max"), want)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_batch_equals_single_images(fusion):
    model = _sharpen(_deit())
    x = torch.randn(4, 3, 48, 80)
    batch = attention_rollout(model, x, head_fusion=fusion, discard_ratio=0.6)
    assert batch.shape == (4, 3, 5)
    for b in range(4):
        single = attention_rollout(model, x[b:b + 1], head_fusion=fusion, discard_ratio=0.6)
        assert (batch[b] - single[0]).abs().max() <= 1e-6
    # discarding changes the result, and the rollout is not the plain last-layer map
    assert (batch - attention_rollout(model, x, head_fusion=fusion)).abs().max() > 1e-4


# ---- gradient rollout ------------------------------------------------------------------------------------
def test_grad_rollout_depends_on_class_and_is_batch_consistent():
    model = _sharpen(_deit())
    x = torch.randn(3, 3, 48, 80)
    g0, g1 = grad_rollout(model, x, 0), grad_rollout(model, x, 3)
    assert g0.shape == (3, 3, 5) and torch.isfinite(g0).all() and torch.isfinite(g1).all()
    assert (g0 - g1).abs().max() > 1e-4
    per_image = torch.tensor([0, 3, 0])
    mixed = grad_rollout(model, x, per_image)
    for b in range(3):
        single = grad_rollout(model, x[b:b + 1], int(per_image[b]))
        assert (mixed[b] - single[0]).abs().max() <= 1e-6
    assert all(p.grad is None for p in model.parameters())  # parameters' gradients left alone
    assert all(model.get_submodule(n).recorder is None for n in attention_layers(model))


# ---- attention distance ----------------------------------------------------------------------------------
def test_attention_distance_by_hand():
    eye = torch.eye(4).expand(2, 1, 4, 4)  # every patch attends only to itself
    assert attention_distance(eye, (2, 2), 16).item() == 0.0
    uniform = torch.full((1, 1, 4, 4), 0.25)  # 2×2 grid, patch 16: distances 0, 16, 16, 16√2
    want = (0 + 16 + 16 + 16 * math.sqrt(2)) / 4
    assert attention_distance(uniform, (2, 2), 16).item() == pytest.approx(want, rel=1e-6)
    # a [CLS] token: its row is ignored, attention to it is left out and the rest renormalised
    w = torch.zeros(1, 2, 5, 5)
    w[:, 0, :, 0] = 0.5
    w[:, 0, :, 1:] = 0.125
    w[:, 1, 1:, 1:] = torch.eye(4)
    out = attention_distance(w, (2, 2), 16, num_prefix_tokens=1)
    torch.testing.assert_close(out, torch.tensor([want, 0.0]))
    # non-square patches: 1×2 grid of 8×32 patches, uniform → half the distance is 0, half 32
    assert attention_distance(torch.full((1, 1, 2, 2), 0.5), (1, 2), (8, 32)).item() == pytest.approx(16.0)


def test_mean_attention_distance_on_model():
    model = _sharpen(_vit())
    x = torch.randn(2, 3, 64, 64)
    d = mean_attention_distance(model, x)
    assert d.shape == (3, 2)
    assert (d >= 0).all() and (d <= 48 * math.sqrt(2)).all()
    torch.testing.assert_close(mean_attention_distance(model, x, patch_size=1) * 16, d)


# ---- recording only what is asked --------------------------------------------------------------------------
def test_recording_one_layer_leaves_logits_and_stores_one_matrix(monkeypatch):
    model = vitkit.create_model("vit_tiny_patch16_224", depth=12, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    explicit = []
    real = attention_mod.attend

    def counting(*a, **kw):
        explicit.append(kw.get("need_weights", False))
        return real(*a, **kw)

    monkeypatch.setattr(attention_mod, "attend", counting)
    with torch.no_grad():
        ref = model(x)
        with record_attention(model, ["blocks.7.attn"]) as rec:
            out = model(x)
    assert (out - ref).abs().max() <= 1e-6
    stored = [t for ts in rec.maps.values() for t in ts]
    assert list(rec.maps) == ["blocks.7.attn"] and len(stored) == 1
    assert stored[0].shape == (2, 3, 17, 17)
    assert explicit[12:].count(True) == 1 and explicit[12 + 7]  # only block 7 took the explicit path
    assert cls_attention(model, x, layers=[7]).shape == (1, 2, 3, 4, 4)


# ---- embeddings ----------------------------------------------------------------------------------------------
def test_sincos_pos_embed_similarity_peaks_on_diagonal_and_falls_with_distance():
    model = _deit(pos_embed="sincos", embed_dim=64)
    sim = pos_embed_similarity(model)
    Gh, Gw = 3, 5
    assert sim.shape == (Gh, Gw, Gh, Gw)
    flat = sim.reshape(Gh * Gw, Gh * Gw)
    torch.testing.assert_close(flat.diagonal(), torch.ones(Gh * Gw))
    assert (flat.argmax(dim=1) == torch.arange(Gh * Gw)).all()
    assert (sim[0, 0, 0, 1:] < sim[0, 0, 0, :-1]).all()  # along the row
    assert (sim[0, 0, 1:, 0] < sim[0, 0, :-1, 0]).all()  # down the column
    assert (sim[1, 2, 1, 3:] < sim[1, 2, 1, 2:-1]).all()  # from an inner position


def test_patch_embed_filters_are_principal_components():
    model = _vit(embed_dim=64, patch_size=4, in_chans=1, img_size=16)
    f = patch_embed_filters(model, k=6)
    assert f.shape == (6, 1, 4, 4)
    v = f.reshape(6, -1).double()
    torch.testing.assert_close(v @ v.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    w = model.patch_embed.proj.weight.detach().reshape(64, -1).double()
    cov = torch.cov(w.T)  # (16, 16) over the 64 filters
    evals, evecs = torch.linalg.eigh(cov)
    top = evecs[:, evals.argsort(descending=True)[:6]].T  # (6, 16)
    assert ((v * top).sum(-1).abs() - 1).abs().max() < 1e-4
    with pytest.raises(ValueError, match="at most 16"):
        patch_embed_filters(model, k=17)


# ---- Swin -------------------------------------------------------------------------------------------------------
def _same_window(side: int, window: int):
    """(side², side²) bool: positions p, q of a side×side map fall in the same plain window."""
    pos = torch.arange(side * side)
    r, c = pos // side // window, pos % side // window
    return (r[:, None] == r[None]) & (c[:, None] == c[None])


def test_window_attention_maps_stay_in_windows():
    name = "swin_tiny_patch4_window7_224"
    model = vitkit.create_model(name, **vitkit.get_entry(name).tiny).eval()  # window 2, 16×16 map first
    x = torch.randn(2, 3, 64, 64)
    maps = window_attention_maps(model, x, "layers.0.blocks.0")  # plain windows
    assert maps.shape == (2, 1, 256, 256)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 1, 256))
    assert ((maps > 0).sum(-1) == 4).all()  # a 2×2 window
    assert (maps[:, :, ~_same_window(16, 2)] == 0).all()
    shifted = window_attention_maps(model, x, 2)  # layers.1.blocks.1: shifted windows on the 8×8 map
    assert shifted.shape == (2, 2, 64, 64)
    torch.testing.assert_close(shifted, window_attention_maps(model, x, "layers.1.blocks.1"))
    torch.testing.assert_close(shifted.sum(-1), torch.ones(2, 2, 64))
    assert (shifted[:, :, ~_same_window(8, 2)] > 0).any()  # they cross the plain windows' borders
    with pytest.raises(TypeError, match="no SwinBlock"):
        window_attention_maps(_vit(), torch.randn(1, 3, 64, 64), 0)


# ---- plots --------------------------------------------------------------------------------------------------------
def test_plots_return_figures_that_render():
    from matplotlib.figure import Figure

    from vitkit.explain import plots

    model = _vit()
    x = torch.randn(1, 3, 64, 64)
    figs = [
        plots.plot_attention_overlay(x[0], head_mean(cls_attention(model, x))[:, 0]),
        plots.plot_attention_overlay(x[0], attention_rollout(model, x)[0], titles=["rollout"]),
        plots.plot_attention_distance(mean_attention_distance(model, x)),
        plots.plot_pos_embed_similarity(pos_embed_similarity(model)),
        plots.plot_filters(patch_embed_filters(model, k=10)),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:4] == b"\x89PNG"


def test_cait_reads_cls_from_class_attention_and_distance_from_patch_layers():
    """CaiT's layers see different tokens: patches only (self-attention), then [CLS] over [CLS] + patches (class
    attention). Each analysis reads the layers it can, and rollout, which multiplies them, refuses."""
    from vitkit.explain import attention_rollout, cls_attention, mean_attention_distance
    from vitkit.layers import record_attention
    model = vitkit.create_model("cait_xxs24_224", **vitkit.get_entry("cait_xxs24_224").tiny).eval()
    size = model.cfg.img_size
    x = torch.randn(2, 3, size, size)
    n_self, n_class = len(model.blocks), len(model.blocks_token_only)
    maps = cls_attention(model, x)
    assert maps.shape[0] == n_class
    with torch.no_grad(), record_attention(model, ["blocks_token_only.0.attn"]) as rec:
        model(x)
    (raw,) = rec.maps["blocks_token_only.0.attn"]  # (B, H, 1, 1 + N)
    torch.testing.assert_close(maps[0].flatten(-2), raw[:, :, 0, 1:])
    assert mean_attention_distance(model, x).shape == (n_self, model.blocks[0].attn.num_heads)
    with pytest.raises(ValueError, match="rollout does not apply"):
        attention_rollout(model, x)
    with pytest.raises(ValueError, match="do not attend from"):
        cls_attention(model, x, layers=["blocks.0.attn"])
