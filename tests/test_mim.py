"""Masked image modelling: BEiT's against transformers' BeitForMaskedImageModeling, the blockwise masks, the mask
token seam in ViT and BEiT, the k-means codebook, the loss, and the objective on the one trainer."""
from __future__ import annotations

import math

import pytest
import torch

import vitkit
from vitkit.models._backbone import backbone_weights
from vitkit.models.mae import patchify
from vitkit.models.mim import BlockMasking, PatchCodebook
from vitkit.train import TrainConfig, train
from vitkit.weights import hf, load_checkpoint
from vitkit.weights.converted import Converted

from parity import add_noise, perturb
from resume import assert_resumes_exactly

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SMALL_BEIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, use_mask_token=True, vocab_size=50, layer_norm_eps=1e-6,
                  use_relative_position_bias=True, layer_scale_init_value=0.1)
BEIT_OPTS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_a_transformers_beit_mim_folder_gives_the_same_logits_and_loss(tmp_path, transformers, mean_pooling):
    """use_mean_pooling=False adds the base model's own LayerNorm before the MIM head's: both are read."""
    theirs = transformers.BeitForMaskedImageModeling(transformers.BeitConfig(**SMALL_BEIT,
                                                                             use_mean_pooling=mean_pooling))
    perturb(theirs, params={"*": add_noise(0.05)}).eval()
    theirs.save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    images, mask = torch.randn(3, 3, 32, 32, generator=g), torch.rand(3, 16, generator=g) < 0.4
    labels = torch.randint(50, (3, 16), generator=g)
    with torch.no_grad():
        ref = theirs(pixel_values=images, bool_masked_pos=mask, labels=labels[mask])
    converted = hf.read(tmp_path)
    assert converted.model_name == "mim_beit_base_patch16_224" and converted.overrides["vocab_size"] == 50
    ours = vitkit.load_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = ours.predict(images, mask)
        loss = ours.loss(logits, labels, mask)
        unmasked = ours.predict(images, torch.zeros_like(mask))
    assert (logits - ref.logits).abs().max() <= 1e-4
    assert abs(loss.item() - ref.loss.item()) <= 1e-5
    assert (logits - unmasked).abs().max() > 1e-2  # the mask token is in play
    with pytest.raises(RuntimeError, match="codebook is not fitted"):
        ours(images, mask=mask)  # transformers' folders hold no tokenizer


# ---- BEiT's blockwise masking -----------------------------------------------------------------------------------
def test_blockwise_masks_stay_within_their_bounds_and_can_fall_short():
    gen = torch.Generator().manual_seed(0)
    masking = BlockMasking((14, 14), 75, min_patches=16, min_aspect=0.3)  # BEiT's setting: 75 of 196
    counts = []
    for _ in range(300):
        mask, rects = masking.blocks(gen)
        union = torch.zeros_like(mask)
        for top, left, h, w in rects:
            assert h * w >= 16 and 0 <= top and top + h <= 14 and 0 <= left and left + w <= 14
            assert h < 14 and w < 14
            # h and w are rounded from √(area·r) and √(area/r), r in [0.3, 1/0.3]: the unrounded ratio fits
            assert (h + 0.5) / (w - 0.5 if w > 0.5 else 1e-9) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
            union[top:top + h, left:left + w] = True
        assert torch.equal(union, mask)  # the mask is exactly its blocks
        counts.append(int(mask.sum()))
    assert max(counts) <= 75  # never more than asked
    assert min(counts) < 75   # ... and sometimes fewer: ten failed tries stop it
    assert 0.8 * 75 <= sum(counts) / len(counts) <= 75


def test_blockwise_masking_is_deterministic_for_a_generator():
    masking = BlockMasking((7, 7), 20, min_patches=4)
    a = masking(8, torch.Generator().manual_seed(3))
    b = masking(8, torch.Generator().manual_seed(3))
    c = masking(8, torch.Generator().manual_seed(4))
    assert a.shape == (8, 49) and a.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(m.tolist()) for m in a}) > 1  # each sample its own mask


def test_blockwise_masking_refuses_a_block_larger_than_the_budget():
    with pytest.raises(ValueError, match="lower mask_min_patches"):
        BlockMasking((4, 4), 6, min_patches=16)


# ---- the mask token seam -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_pico_patch4_28", "beit_base_patch16_224"])
def test_the_mask_token_replaces_exactly_the_hidden_patches(name):
    opts = dict(BEIT_OPTS, in_chans=1, img_size=28, patch_size=4) if name.startswith("beit") else {}
    torch.manual_seed(0)
    model = vitkit.create_model(name, mask_token=True, num_classes=0, **opts).eval()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 10] = True
    tokens = model.prepare_tokens(x, mask=mask)
    plain = model.prepare_tokens(x)
    p = model.num_prefix_tokens
    changed = (tokens - plain).abs().sum(-1) > 0  # (B, prefix + N)
    assert changed[0, p + 10] and changed.sum() == 1
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x, mask=torch.zeros_like(mask)), model.forward_features(x),
                              atol=1e-6)
        hidden = model.encode(tokens)
    assert hidden.shape == plain.shape
    bare = vitkit.create_model(name, num_classes=0, **opts)
    with pytest.raises(ValueError, match="mask_token=True"):
        bare.prepare_tokens(x, mask=mask)


# ---- the k-means codebook ------------------------------------------------------------------------------------------
def test_the_codebook_finds_clusters_and_encodes_to_the_nearest():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 5
    points = centres.repeat(200, 1) + 0.05 * torch.randn(800, 6, generator=g)
    book = PatchCodebook(4, 6)
    with pytest.raises(RuntimeError, match="not fitted"):
        book.encode(points)
    fit = book.fit(points, torch.Generator().manual_seed(1))
    assert fit["entries_used"] == 4 and fit["quantisation_mse"] < 0.01
    # every true centre has a centroid next to it
    assert torch.cdist(centres, book.centroids).min(dim=1).values.max() < 0.1
    codes = book.encode(points)
    nearest = torch.cdist(points, book.centroids).argmin(dim=1)
    assert torch.equal(codes, nearest)
    again = PatchCodebook(4, 6)
    again.fit(points, torch.Generator().manual_seed(1))
    assert torch.equal(again.centroids, book.centroids)  # deterministic for a generator


@pytest.mark.parametrize("target", ["tokens", "pixels"])
def test_the_loss_is_taken_on_the_hidden_patches_only(target):
    torch.manual_seed(0)
    model = vitkit.create_model("mim_vit_pico_patch2_8", depth=1, embed_dim=16, num_heads=2, target=target).eval()
    images = torch.randn(3, 1, 8, 8)
    if target == "tokens":
        model.codebook.fit(patchify(torch.randn(64, 1, 8, 8), 2), torch.Generator().manual_seed(0))
    mask = model.masking(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.predict(images, mask)
    targets = model.targets(images)
    base = model.loss(logits, targets, mask)
    noisy = logits + 10 * torch.randn_like(logits) * (~mask)[..., None]  # change every visible patch's output
    assert torch.allclose(model.loss(noisy, targets, mask), base)
    hidden = logits + 10 * torch.randn_like(logits) * mask[..., None]
    assert not torch.allclose(model.loss(hidden, targets, mask), base)
    if target == "pixels":  # an L1 over the hidden pixels
        assert torch.allclose(base, (logits - patchify(images, 2))[mask].abs().mean())


def test_a_beit_mim_model_hands_its_encoder_to_fine_tuning():
    torch.manual_seed(0)
    mim = vitkit.create_model("mim_beit_base_patch16_224", **BEIT_OPTS, target="pixels")
    converted = Converted("mim_beit_base_patch16_224", mim.state_dict(), dict(BEIT_OPTS, target="pixels"), None,
                          "vitkit")
    backbone = backbone_weights(converted)
    assert backbone.model_name == "beit_base_patch16_224" and "mask_token" not in backbone.state
    assert "mask_token" not in backbone.overrides and backbone.overrides["depth"] == 2
    assert backbone.overrides["num_classes"] == 0
    beit = vitkit.create_model("beit_base_patch16_224", **backbone.overrides)
    beit.load_state_dict(backbone.state)  # strict: every tensor of the plain BEiT, nothing else


# ---- the objective on the one trainer ------------------------------------------------------------------------------
def mim_cfg(tmp_path, name, epochs=2, target="tokens", **kw):
    return TrainConfig(objective="mim", model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path), name=name,
                       epochs=epochs, batch_size=128, progress=False, threads=1,
                       model_overrides=dict(depth=2, embed_dim=32, num_heads=2, target=target), **kw)


def test_mim_pretrains_on_the_trainer_and_its_encoder_fine_tunes(tmp_path):
    lines = []
    result = train(mim_cfg(tmp_path, "mim"), log=lines.append)
    assert any("codebook: 64 k-means entries fitted" in line for line in lines), lines
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["val_token_acc_majority"] == rows[1]["val_token_acc_majority"]  # fixed validation masks
    assert all(0 <= r["val_token_acc"] <= 1 and r["val_loss"] > 0 for r in rows)
    assert rows[1]["val_loss"] < math.log(64)  # better than a uniform guess over the codebook
    best = load_checkpoint(result.run_dir / "best.safetensors")
    assert best.model_name == "mim_vit_pico_patch2_8" and best.state["codebook.centroids"].abs().sum() > 0
    assert best.data["val_loss"] == min(r["val_loss"] for r in rows)  # lower is better
    assert (result.run_dir / "mim.png").stat().st_size > 10_000
    assert (result.run_dir / "codebook.json").exists()

    lines = []
    tuned = train(TrainConfig(init=str(result.run_dir / "best.safetensors"), data="digits", runs_dir=str(tmp_path),
                              name="ft", epochs=1, batch_size=128, progress=False, threads=1, layer_decay=0.75),
                  log=lines.append)
    assert any("new head for 10 classes (the checkpoint has none)" in line for line in lines), lines
    ft = load_checkpoint(tuned.run_dir / "best.safetensors")
    assert ft.model_name == "vit_pico_patch2_8" and "mask_token" not in ft.state
    vit = vitkit.load_pretrained(result.run_dir / "best.safetensors", "vit_pico_patch2_8")
    assert torch.equal(vit.blocks[0].attn.qkv.weight, best.state["encoder.blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("target", ["tokens", "pixels"])
def test_mim_resumes_exactly(tmp_path, target):
    assert_resumes_exactly(lambda name, epochs: mim_cfg(tmp_path, name, epochs, target=target), tmp_path)
