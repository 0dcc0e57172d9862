"""forward_intermediates in timm's formats: code written for timm's forward_intermediates gets timm's tensors.

vitkit's default ("tokens") returns every token after each block; output_fmt="NCHW" (timm's default) and "NLC"
return the patch tokens only, as maps or as a sequence; indices=k takes the last k blocks and norm=True applies
the final norm to each intermediate, as in timm.
"""
from __future__ import annotations

import pytest
import torch

import vitkit
from parity import TOL, timm_pair

CASES = {  # name → small options both libraries take
    "vit_small_patch16_224": dict(img_size=64, depth=3, embed_dim=48, num_heads=3),
    "deit_tiny_distilled_patch16_224": dict(img_size=64, depth=3),
    "beit_base_patch16_224": dict(img_size=64, depth=3, embed_dim=64, num_heads=2),
    "cait_xxs24_224": dict(img_size=64, depth=3),
}


@pytest.mark.timm
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("call", [dict(), dict(output_fmt="NCHW"), dict(output_fmt="NLC"),
                                  dict(indices=2, norm=True, output_fmt="NCHW"), dict(indices=[0, -1])], ids=str)
def test_timm_formats_equal_timm(timm, name, call):
    ours, theirs = timm_pair(timm, name, **CASES[name])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        their_final, their_blocks = theirs.forward_intermediates(x, **call)  # timm's defaults where not given
        final, blocks = ours.forward_intermediates(x, **{"output_fmt": "NCHW", **call})
    assert len(blocks) == len(their_blocks) == (2 if "indices" in call else 3)
    torch.testing.assert_close(final, their_final, rtol=0, atol=TOL)
    for a, b in zip(blocks, their_blocks):
        assert a.shape == b.shape
        if call.get("output_fmt", "NCHW") == "NCHW":
            assert a.shape[-2:] == (4, 4)  # (B, D, Hp, Wp): 64 / 16
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_the_formats_are_views_of_the_tokens(tiny_vit):
    model = vitkit.create_model("vit_tiny_patch16_224", **dict(tiny_vit, img_size=(32, 48))).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        _, tokens = model.forward_intermediates(x)
        _, maps = model.forward_intermediates(x, output_fmt="NCHW")
        _, patches = model.forward_intermediates(x, output_fmt="NLC")
    D = tiny_vit["embed_dim"]
    assert tokens[0].shape == (2, 1 + 2 * 3, D) and patches[0].shape == (2, 6, D) and maps[0].shape == (2, D, 2, 3)
    torch.testing.assert_close(patches[0], tokens[0][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(maps[0], tokens[0][:, 1:].reshape(2, 2, 3, D).permute(0, 3, 1, 2), rtol=0, atol=0)


def test_bad_formats_and_counts_are_clear_errors(tiny_vit):
    model = vitkit.create_model("vit_tiny_patch16_224", **tiny_vit)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="output_fmt must be one of 'tokens', 'NCHW', 'NLC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(IndexError, match="indices=3 asks for the last 3 blocks of a model with 2; use 1..2"):
        model.forward_intermediates(x, indices=3)
