"""DeiT: the plain models are ViTs; the distilled ones add a token and a head. Counts, timm parity, behaviour."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models import VisionTransformer
from vitkit.models.deit import DistilledVisionTransformer
from vitkit.registry import IMAGENET_MEAN, IMAGENET_STD

from parity import TOL, max_logit_diff, meta_model, n_params, timm_pair

SIZES = ("tiny", "small", "base")
PLAIN = [f"deit_{s}_patch16_224" for s in SIZES]
DISTILLED = [f"deit_{s}_distilled_patch16_224" for s in SIZES]


def tiny(name: str, **overrides) -> torch.nn.Module:
    """The model at its registered smoke-test size (32×32 images, D=32, 2 blocks), in eval mode."""
    return vitkit.create_model(name, **{**vitkit.get_entry(name).tiny, **overrides}).eval()


# ---- 1. parameter counts and the registry -------------------------------------------------------------------
PARAM_COUNTS = {  # with the 1000-class head(s), as timm counts them
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
}


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("size", SIZES)
def test_registry_entries(size):
    """A plain DeiT is exactly the ViT of its size; both kinds expect ImageNet normalisation."""
    plain = vitkit.get_entry(f"deit_{size}_patch16_224")
    distilled = vitkit.get_entry(f"deit_{size}_distilled_patch16_224")
    assert plain.config == distilled.config == vitkit.model_config(f"vit_{size}_patch16_224")
    assert plain.builder is VisionTransformer and distilled.builder is DistilledVisionTransformer
    assert issubclass(DistilledVisionTransformer, VisionTransformer)
    for entry in (plain, distilled):
        assert entry.family == "deit" and (entry.mean, entry.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert entry.tiny and entry.tiny["depth"] == 2


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
# The common perturbation (parity.perturb: noise on biases, norms and the tokens) is all a DeiT needs.
# At depth 2 here (same widths, same code, a sixth of the time); full depth is in the slow tests.
PARITY = [(n, {"depth": 2}) for n in PLAIN + DISTILLED]


@pytest.mark.timm
@pytest.mark.parametrize("name,overrides", PARITY, ids=[f"{n}-{o}" for n, o in PARITY])
def test_timm_parity(timm, name, overrides):
    ours, theirs = timm_pair(timm, name, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


@pytest.mark.timm
@pytest.mark.parametrize("name", DISTILLED)
def test_timm_parity_distilled_training(timm, name):
    """In training mode with distilled training on, both return (class logits, distillation logits), equal."""
    ours, theirs = timm_pair(timm, name, depth=2)
    ours.train().set_distilled_training(True)
    theirs.train().set_distilled_training(True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == 2
    for mine, their in zip(a, b):
        assert mine.shape == their.shape == (2, 1000)
        assert (mine - their).abs().max().item() <= TOL
    assert not torch.allclose(a[0], a[1])  # two different heads, not one returned twice


@pytest.mark.timm
def test_timm_parity_dynamic_img_size(timm):
    """Built at 224, run at 160×192: both resample the position embeddings past the two prefix tokens alike."""
    ours, theirs = timm_pair(timm, "deit_tiny_distilled_patch16_224", depth=2, dynamic_img_size=True)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 160, 192)) <= TOL


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", PLAIN + DISTILLED)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. the distillation token and the two heads -------------------------------------------------------------
def test_distilled_training_returns_both_heads(images):
    model = tiny("deit_tiny_distilled_patch16_224", num_classes=7)
    x = images(3)
    with torch.no_grad():
        model.train()
        assert model(x).shape == (3, 7)  # plain training (fine-tuning): the mean, one tensor
        model.set_distilled_training(True)
        cls, dist = model(x)
        assert cls.shape == dist.shape == (3, 7)
        assert not torch.allclose(cls, dist)
        model.eval()  # distilled training on, but evaluating: the mean again
        mean = model(x)
    assert isinstance(mean, torch.Tensor) and mean.shape == (3, 7)
    torch.testing.assert_close(mean, (cls + dist) / 2)


def test_eval_output_is_the_mean_of_both_heads(images):
    model = tiny("deit_small_distilled_patch16_224", num_classes=7)
    x = images()
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, 2 + N, D): [CLS], [DIST], patches
        from_cls, from_dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        y = model(x)
    assert tokens.shape == (2, 2 + 4, 32)
    assert not torch.allclose(from_cls, from_dist, atol=1e-3)
    torch.testing.assert_close(y, (from_cls + from_dist) / 2)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), (tokens[:, 0] + tokens[:, 1]) / 2)


def test_dist_token_comes_after_cls_and_registers():
    """With 2 registers the layout is [CLS], reg, reg, [DIST], patches; head_dist reads position 3."""
    model = tiny("deit_base_distilled_patch16_224", num_classes=5, reg_tokens=2)
    assert model.num_prefix_tokens == 4 and model.dist_index == 3
    assert model.pos_embed.shape == (1, 4 + 4, 32)
    prefix = model._prefix_tokens(1)
    torch.testing.assert_close(prefix[-1], model.dist_token, rtol=0, atol=0)
    torch.testing.assert_close(prefix[0], model.cls_token, rtol=0, atol=0)
    tokens = torch.randn(2, 8, 32)
    with torch.no_grad():
        expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 3])) / 2
        torch.testing.assert_close(model.forward_head(tokens), expected)


def test_dist_token_trains(images):
    """A distillation loss on the second head reaches the distillation token and head_dist."""
    model = tiny("deit_tiny_distilled_patch16_224", num_classes=4).train()
    model.set_distilled_training(True)
    cls, dist = model(images())
    F.cross_entropy(dist, torch.tensor([0, 3])).backward()
    assert model.dist_token.grad is not None and model.dist_token.grad.any()
    assert model.head_dist.weight.grad.any()
    assert model.head.weight.grad is None or not model.head.weight.grad.any()  # the class head took no part


def test_reset_classifier_resets_both_heads(images):
    model = tiny("deit_tiny_distilled_patch16_224")
    old_dist = model.head_dist
    model.reset_classifier(5)
    assert model.head.out_features == model.head_dist.out_features == 5 and model.head_dist is not old_dist
    assert not model.head_dist.bias.any()
    model.train().set_distilled_training(True)
    with torch.no_grad():
        assert [t.shape for t in model(images())] == [(2, 5), (2, 5)]
    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity) and isinstance(model.head_dist, torch.nn.Identity)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, global_pool="avg")


def test_no_weight_decay_and_init():
    model = vitkit.create_model("deit_small_distilled_patch16_224", depth=1)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "reg_token", "dist_token"}
    assert {"pos_embed", "cls_token", "dist_token"} <= names.keys()
    assert 0.015 < model.dist_token.std().item() < 0.025  # truncated normal, std 0.02
    assert model.cls_token.abs().max().item() < 1e-4      # the ViT's normal, std 1e-6
    assert 0.015 < model.head_dist.weight.std().item() < 0.025 and not model.head_dist.bias.any()


@pytest.mark.parametrize("option", [{"global_pool": "avg"}, {"head_hidden_size": 64}, {"fc_norm": True},
                                    {"class_token": False, "global_pool": "avg"}], ids=str)
def test_unsupported_options_are_refused(option):
    with pytest.raises(ValueError, match="distilled DeiT") as err:
        tiny("deit_tiny_distilled_patch16_224", **option)
    assert next(iter(option)) in str(err.value)
