"""Every registered model, shrunk to a tiny size, on the CPU: the common face works and trains.

The checks run over `vitkit.list_models()`, so a model family added later is tested by registering
it. `tiny_overrides` shrinks a model through its config fields; a family whose config names its
sizes differently should teach it those names.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import vitkit

from parity import meta_model, n_params
from vitkit.layers import AttentionBase, record_attention

BATCH = 2
HEAD_DIM = 8  # tiny models keep their head count and give each head this width


def tiny_overrides(name: str) -> dict:
    """Config overrides that shrink model `name` to a few thousand parameters, from its config fields.

    depth → 2 (per-stage depths → 1), embed_dim → num_heads·HEAD_DIM, img_size → 2·patch_size
    (two patches a side). A field the config lacks is left alone.
    """
    if vitkit.get_entry(name).tiny:  # the family says how to shrink it
        return dict(vitkit.get_entry(name).tiny)
    cfg = vitkit.model_config(name)
    fields = {f.name for f in dataclasses.fields(cfg)}
    over: dict = {}
    depth = getattr(cfg, "depth", None)
    if isinstance(depth, int):
        over["depth"] = min(depth, 2)
    depths = getattr(cfg, "depths", None)
    if isinstance(depths, (tuple, list)):
        over["depths"] = type(depths)(1 for _ in depths)
    heads = getattr(cfg, "num_heads", None)
    if "embed_dim" in fields and isinstance(heads, int):
        over["embed_dim"] = min(cfg.embed_dim, heads * HEAD_DIM)
    patch = getattr(cfg, "patch_size", None)
    if "img_size" in fields and isinstance(patch, int):
        size = cfg.img_size if isinstance(cfg.img_size, int) else max(cfg.img_size)
        over["img_size"] = min(size, 2 * patch)
    return over


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """The tiny model, a random batch (B, C, H, W) of the size it is built for, and the overrides."""
    over = tiny_overrides(name)
    cfg = vitkit.model_config(name, **over)
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    return vitkit.create_model(name, **over), torch.randn(BATCH, cfg.in_chans, h, w), over


# Image classifiers and backbones; pretraining models (MAE: images in, a loss and a reconstruction out) have their
# own tests (tests/test_mae.py). Sequence models (inputs='tokens') get the checks that apply to them, below.
MODELS = [n for n in vitkit.list_models() if "pretraining" not in vitkit.get_entry(n).tags
          and vitkit.get_entry(n).inputs == "image"]
SEQUENCE_MODELS = [n for n in vitkit.list_models() if vitkit.get_entry(n).inputs in ("tokens", "image+tokens")]


def test_registry_is_not_empty():
    assert len(MODELS) >= 20
    assert "vit_base_patch16_224" in MODELS


def test_tiny_overrides_shrink_a_vit():
    over = tiny_overrides("vit_huge_patch14_224")
    assert over == {"depth": 2, "embed_dim": 16 * HEAD_DIM, "img_size": 28}
    assert tiny_overrides("vit_pico_patch2_8")["img_size"] == 4


def _names_timm_has() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return [n for n in MODELS if timm.is_model(n)]


@pytest.mark.timm
@pytest.mark.parametrize("name", _names_timm_has() or ["vit_base_patch16_224"])  # (skipped without timm)
def test_architecture_matches_timm(timm, name):
    """Every model timm also has, at full size on the meta device: the same parameter count, and the same
    state-dict keys (buffers included) with the same shapes, so timm's checkpoints load with no remapping."""
    ours = meta_model(name)
    with torch.device("meta"):  # with our head: timm builds some names (vit_huge_patch14_224) without one
        theirs = timm.create_model(name, pretrained=False, num_classes=ours.num_classes)
    assert n_params(ours) == n_params(theirs)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_finite(name):
    model, x, _ = build(name)
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (BATCH, vitkit.model_config(name).num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model, x, _ = build(name)
    model.train()
    target = torch.randint(0, model.num_classes, (BATCH,))
    loss = F.cross_entropy(model(x), target)
    assert torch.isfinite(loss)
    loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    missing = [n for n, p in trained if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in trained if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [n for n, p in trained if not p.grad.any()]
    assert len(zero) <= 0.1 * len(trained), f"all-zero gradient for {zero}"


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model, x, _ = build(name)
    model.eval()
    model.reset_classifier(5)
    assert model.num_classes == 5
    with torch.no_grad():
        assert model(x).shape == (BATCH, 5)
        model.reset_classifier(0)
        assert model.num_classes == 0
        feats = model(x)
        assert feats.shape == (BATCH, model.num_features)
        torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("name", MODELS)
def test_features_and_head(name):
    model, x, _ = build(name)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[0] == BATCH
        assert model.forward_head(feats, pre_logits=True).shape == (BATCH, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    model, x, over = build(name)
    model.eval()
    with torch.no_grad():
        final, per_block = model.forward_intermediates(x)
        feats = model.forward_features(x)
        last_only = model.forward_intermediates(x, indices=[-1])[1]
    torch.testing.assert_close(final, feats, rtol=0, atol=1e-6)
    # one tensor per block (isotropic models) or per stage (hierarchical ones), as feature_info lists
    assert len(per_block) == len(model.feature_info)
    if "depth" in over and hasattr(model, "blocks"):
        assert len(per_block) == over["depth"]
    for t, info in zip(per_block, model.feature_info):
        assert t.shape[0] == BATCH and info["num_chs"] in (t.shape[1], t.shape[-1])
    assert len(last_only) == 1
    torch.testing.assert_close(last_only[0], per_block[-1], rtol=0, atol=0)
    assert not torch.equal(per_block[0], per_block[-1])  # one output per block, not one repeated


CNN_FAMILIES = {"convnext", "resnet"}  # the only families without attention


@pytest.mark.parametrize("name", MODELS)
def test_attention_is_recorded_without_changing_the_output(name):
    """Every attention module of every model goes through the one attention function, so a recorder sees it;
    recording takes the explicit path and must not change the logits."""
    model, x, _ = build(name)
    model.eval()
    modules = [n for n, m in model.named_modules() if isinstance(m, AttentionBase)]
    assert bool(modules) == (vitkit.get_entry(name).family not in CNN_FAMILIES)
    with torch.no_grad():
        fused = model(x)
        with record_attention(model) as rec:
            recorded = model(x)
        after = model(x)
    torch.testing.assert_close(recorded, fused, rtol=0, atol=1e-5)
    assert sorted(rec.maps) == sorted(modules)
    for weights in (w for maps in rec.maps.values() for w in maps):
        assert weights.ndim == 4 and torch.isfinite(weights).all()
    assert all(len(v) == 1 for v in rec.maps.values())  # each module ran once, and recorded once
    assert all(getattr(model.get_submodule(n), "recorder") is None for n in modules)  # detached afterwards
    torch.testing.assert_close(after, fused, rtol=0, atol=0)


def test_record_attention_only_the_named_layers_and_heads():
    model = vitkit.create_model("vit_pico_patch2_8", depth=3).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(), record_attention(model, ["blocks.1.attn"], heads=[0, 2]) as rec:
        model(x)
    assert list(rec.maps) == ["blocks.1.attn"]
    (weights,) = rec.maps["blocks.1.attn"]
    assert weights.shape == (2, 2, 17, 17)  # 2 of 4 heads; 16 patches + [CLS]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 17))
    with pytest.raises(KeyError, match="blocks.9.attn"):
        with record_attention(model, ["blocks.9.attn"]):
            pass


def _one_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in MODELS:
        first.setdefault(vitkit.get_entry(name).family, name)
    return sorted(first.values())


@pytest.mark.parametrize("name", _one_per_family())
def test_no_graph_breaks_under_torch_compile(name):
    """torch._dynamo traces each family's forward as one graph, in eval mode and in train mode: nothing in the
    code sends torch.compile back to Python."""
    model, x, _ = build(name)
    for train in (False, True):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.train(train))(x)
        assert explained.graph_break_count == 0, f"{name} (train={train}): {explained.break_reasons}"
        assert explained.graph_count == 1


# ---- sequence models: source ids or an image, and target ids, in; logits over the target vocabulary out ------------
def build_sequence(name: str):
    """The tiny model, its source (ids (B, 7) with one padded row, or images), target ids (B, 5), and the size of
    its target vocabulary."""
    over = tiny_overrides(name)
    cfg = vitkit.model_config(name, **over)
    torch.manual_seed(0)
    vocab = cfg.tgt_vocab if hasattr(cfg, "tgt_vocab") else cfg.vocab  # a captioner's one vocabulary: `vocab`
    if vitkit.get_entry(name).inputs == "tokens":
        src = torch.randint(3, cfg.src_vocab, (BATCH, 7))
        src[1, 5:] = cfg.pad_id
    else:
        src = torch.randn(BATCH, cfg.in_chans, *cfg.img_size)
    tgt = torch.randint(3, vocab, (BATCH, 5))
    tgt[1, 4:] = cfg.pad_id
    return vitkit.create_model(name, **over), src, tgt, vocab


def test_there_are_sequence_models():
    assert {"transformer_base", "transformer_small", "rnn_bahdanau", "caption_vit_pico_patch4",
            "caption_show_attend_tell"} <= set(SEQUENCE_MODELS)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_model_forward_backward_and_every_parameter_gets_a_gradient(name):
    model, src, tgt, vocab = build_sequence(name)
    model.train()
    logits = model(src, tgt)
    assert logits.shape == (BATCH, 5, vocab) and torch.isfinite(logits).all()
    F.cross_entropy(logits.flatten(0, 1), torch.randint(3, vocab, (BATCH * 5,))).backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trained if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trained)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_model_attention_is_recorded_without_changing_the_output(name):
    model, src, tgt, _ = build_sequence(name)
    model.eval()
    modules = [n for n, m in model.named_modules() if isinstance(m, AttentionBase)]
    with torch.no_grad():
        fused = model(src, tgt)
        with record_attention(model) as rec:
            recorded = model(src, tgt)
    torch.testing.assert_close(recorded, fused, rtol=0, atol=1e-5)
    assert sorted(rec.maps) == sorted(modules)
    additive = vitkit.get_entry(name).family == "rnn" or name == "caption_show_attend_tell"
    assert bool(modules) != additive  # additive attention is not dot-product attention
