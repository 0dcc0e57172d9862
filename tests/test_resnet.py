"""ResNet: parameter counts, equality with timm (eval and train mode), init, intermediates and input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.layers import ImageSizeError
from vitkit.models.resnet import BasicBlock, Bottleneck
from vitkit.registry import IMAGENET_MEAN, IMAGENET_STD

from parity import TOL, max_logit_diff, meta_model, n_params, perturb, redraw_normal, redraw_uniform, timm_pair

NAMES = ["resnet18", "resnet50"]
TINY = vitkit.get_entry("resnet18").tiny


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Randomise what starts degenerate: BN gains (1, or 0 for the zero-initialised last BN of each block), BN
    biases, and the running statistics (0 and 1), so that a swapped or skipped BN changes the logits."""
    return perturb(model, scale=0.2, buffers={"*running_mean": redraw_normal(0.2),
                                              "*running_var": redraw_uniform(0.5, 2.0)})


# ---- 1. parameter counts ------------------------------------------------------------------------------------
PARAM_COUNTS = {"resnet18": 11_689_512, "resnet50": 25_557_032}  # 1000-class head, as timm and torchvision count


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    assert n_params(meta_model(name)) == PARAM_COUNTS[name]


def test_block_types():
    assert isinstance(meta_model("resnet18").layer1[0], BasicBlock)
    assert isinstance(meta_model("resnet50").layer1[0], Bottleneck)
    keys = meta_model("resnet50").state_dict()
    assert keys["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)  # widening needs a projection even at stride 1
    assert "layer1.0.downsample.0.weight" not in meta_model("resnet18").state_dict()


# ---- 2. equal to timm ---------------------------------------------------------------------------------------
PARITY = [("resnet18", {}), ("resnet50", {"layers": (2, 1, 1, 1)})]


@pytest.mark.timm
@pytest.mark.parametrize("name,overrides", PARITY, ids=[f"{n}-{o}" for n, o in PARITY])
def test_timm_parity(timm, name, overrides):
    """64×64 keeps it fast; every stage still runs (layer4 on a 2×2 map)."""
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb, **overrides)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 64, 64)) <= TOL


@pytest.mark.timm
def test_timm_parity_in_train_mode(timm):
    """In train mode BN uses batch statistics and updates its running ones: both must match timm's."""
    ours, theirs = timm_pair(timm, "resnet50", perturb_with=_perturb, layers=(1, 1, 1, 1))
    ours.train(), theirs.train()
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=TOL)
    theirs_state = theirs.state_dict()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, theirs_state[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.timm
def test_intermediates_and_pre_logits_match_timm(timm):
    ours, theirs = timm_pair(timm, "resnet18", perturb_with=_perturb, layers=(1, 1, 1, 1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, feats = ours.forward_intermediates(x)
        their_final, their_feats = theirs.forward_intermediates(x)
        ours_pre = ours.forward_head(ours.forward_features(x), pre_logits=True)
        theirs_pre = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
    assert [t.shape for t in feats] == [t.shape for t in their_feats] == [
        (2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    for a, b in zip([final, *feats, ours_pre], [their_final, *their_feats, theirs_pre]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert ours.feature_info == [{k: d[k] for k in ("num_chs", "reduction", "module")} for d in theirs.feature_info]


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_parity_full_size(timm, name):
    ours, theirs = timm_pair(timm, name, perturb_with=_perturb)
    assert max_logit_diff(ours, theirs, torch.randn(2, 3, 224, 224)) <= TOL


# ---- 3. initialisation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,last", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_last_switches_residual_branches_off(name, last):
    model = vitkit.create_model(name, layers=(1, 1, 1, 1))
    blocks = [b for stage in model.stage_modules() for b in stage]
    assert all(not getattr(b, last).weight.any() for b in blocks)
    assert all(b.bn1.weight.eq(1).all() for b in blocks)
    x = torch.randn(2, 64, 8, 8)
    block = model.layer1[0].eval()
    with torch.no_grad():  # the branch is zero, so the block is ReLU(shortcut)
        torch.testing.assert_close(block(x), F.relu(x if block.downsample is None else block.downsample(x)))
    off = vitkit.create_model(name, layers=(1, 1, 1, 1), zero_init_last=False)
    assert all(getattr(b, last).weight.eq(1).all() for stage in off.stage_modules() for b in stage)


def test_convs_get_he_normal_fan_out():
    model = vitkit.create_model("resnet50", layers=(1, 1, 1, 1))
    w = model.layer3[0].conv2.weight  # (256, 256, 3, 3): fan_out = 256·9
    expected = (2.0 / (256 * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.02


# ---- 4. options, intermediates, input checks ------------------------------------------------------------------
def test_drop_path_rises_linearly():
    model = vitkit.create_model("resnet18", layers=(1, 1, 1, 2), drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "p", 0.0) for stage in model.stage_modules() for b in stage]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="block"):
        vitkit.create_model("resnet18", block="wide")
    with pytest.raises(ValueError, match="same number of stages"):
        vitkit.create_model("resnet18", layers=(1, 1, 1))


def test_forward_intermediates_indices():
    model = vitkit.create_model("resnet50", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        _, chosen = model.forward_intermediates(x, indices=[0, -1])
    assert [t.shape[1] for t in every] == [8, 32, 64, 96, 128]
    assert [d["reduction"] for d in model.feature_info] == [2, 4, 8, 16, 32]
    assert [t.shape[-1] for t in every] == [64 // d["reduction"] for d in model.feature_info]
    torch.testing.assert_close(chosen[0], every[0], rtol=0, atol=0)
    torch.testing.assert_close(chosen[1], final, rtol=0, atol=0)
    with pytest.raises(IndexError, match="5 features"):
        model.forward_intermediates(x, indices=[5])


def test_wrong_channel_count_is_refused():
    model = vitkit.create_model("resnet18", **TINY)
    with pytest.raises(ImageSizeError) as err:
        model(torch.randn(1, 4, 64, 64))
    msg = str(err.value)
    assert "3-channel" in msg and "4 channel" in msg and "in_chans=4" in msg
    with pytest.raises(ImageSizeError, match="unsqueeze"):
        model.forward_intermediates(torch.randn(3, 64, 64))


def test_one_channel_model_and_other_sizes():
    model = vitkit.create_model("resnet18", **TINY, in_chans=1, num_classes=10).eval()
    assert model.conv1.weight.shape == (8, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
        assert model(torch.randn(2, 1, 50, 90)).shape == (2, 10)  # a CNN takes any size


def test_registry_entries():
    for name in NAMES:
        entry = vitkit.get_entry(name)
        assert entry.family == "resnet" and (entry.mean, entry.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert set(vitkit.list_models(family="resnet")) >= set(NAMES)
