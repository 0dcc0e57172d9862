"""MAE: the model against transformers' ViTMAEForPreTraining, the masking, the loss, and the encoder seam."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.models.mae import patchify, random_masking, unpatchify
from vitkit.weights import hf

from parity import add_noise, perturb
from resume import assert_resumes_exactly

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, decoder_hidden_size=24, decoder_num_hidden_layers=2,
             decoder_num_attention_heads=2, decoder_intermediate_size=48)


def tiny_mae(**kw):
    return vitkit.create_model("mae_vit_pico_patch2_8", depth=2, embed_dim=32, num_heads=2, **kw)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_a_transformers_mae_folder_gives_the_same_loss_and_reconstruction(tmp_path, transformers, norm_pix_loss):
    config = transformers.ViTMAEConfig(**SMALL, norm_pix_loss=norm_pix_loss)
    theirs = transformers.ViTMAEForPreTraining(config)
    perturb(theirs, params={"*": add_noise(0.05)}).eval()
    theirs.save_pretrained(tmp_path)
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        ref = theirs(pixel_values=images, noise=noise)
    converted = hf.read(tmp_path)
    assert converted.model_name == "mae_vit_base_patch16_224" and converted.overrides["decoder_depth"] == 2
    ours = vitkit.load_pretrained(tmp_path)
    with torch.no_grad():
        out = ours(images, noise=noise)
    assert torch.equal(out.mask, ref.mask)
    assert (out.pred - ref.logits).abs().max() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
    assert (ref.logits[0] - ref.logits[1]).abs().max() > 1e-2  # the reconstruction depends on the image


def test_vitkit_s_fixed_positions_are_transformers_sincos_ones(transformers):
    """transformers fills the fixed embeddings in initialize_weights (a model built from a config alone may hold
    zeros), in the original MAE's [column | row] layout."""
    theirs = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**SMALL))
    theirs.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    theirs.vit.embeddings.initialize_weights()
    theirs.decoder.initialize_weights(16)
    assert theirs.decoder.decoder_pos_embed.abs().sum() > 1
    ours = vitkit.create_model("mae_vit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                               num_heads=2, mlp_ratio=2.0, decoder_embed_dim=24, decoder_depth=2,
                               decoder_num_heads=2, decoder_mlp_ratio=2.0)
    torch.testing.assert_close(ours.encoder.pos_embed, theirs.vit.embeddings.position_embeddings)
    torch.testing.assert_close(ours.decoder_pos_embed, theirs.decoder.decoder_pos_embed)


def test_masking_is_deterministic_for_a_generator_and_keeps_a_quarter():
    model = tiny_mae()
    a = model.masking(4, generator=torch.Generator().manual_seed(1))
    b = model.masking(4, generator=torch.Generator().manual_seed(1))
    c = model.masking(4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert a.keep.shape == (4, 4) and (a.mask.sum(1) == 12).all()  # 16 patches, 25% kept
    assert (a.mask.gather(1, a.keep) == 0).all()  # the kept ones are exactly the unmasked ones
    for row in range(4):  # restore undoes the shuffle
        order = torch.cat([a.keep[row], torch.tensor([i for i in range(16) if a.mask[row, i] == 1])])
        assert torch.equal(order[a.restore[row]], torch.arange(16)) or a.mask[row].sum() == 12


def test_random_masking_keeps_the_smallest_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = random_masking(noise, 0.5)
    assert m.keep.tolist() == [[1, 3]] and m.mask.tolist() == [[1, 0, 1, 0]]
    with pytest.raises(ValueError, match="keeps no patch"):
        random_masking(noise, 0.9)


def test_the_loss_is_taken_on_the_removed_patches_only():
    torch.manual_seed(0)
    model = tiny_mae().eval()
    images = torch.randn(2, 1, 8, 8)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = model(images, noise=noise)
    seen = out.mask == 0
    changed = patchify(images, 2)
    changed[seen] += 100.0  # a huge change on the patches the encoder saw ...
    target = unpatchify(changed, 2, (4, 4), 1)
    assert model.loss(target, out.pred, out.mask).item() == pytest.approx(out.loss.item(), rel=1e-6)
    changed[~seen] += 1.0  # ... moves nothing; one on the removed ones does
    assert model.loss(unpatchify(changed, 2, (4, 4), 1), out.pred, out.mask).item() != pytest.approx(out.loss.item())


def test_patchify_round_trips_and_follows_mae_s_layout():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    assert patches[0, 0].tolist() == [0, 16, 32, 1, 17, 33, 4, 20, 36, 5, 21, 37]  # (row, column, channel)
    assert torch.equal(unpatchify(patches, 2, (2, 2), 3), images)


def test_the_encoder_sees_only_the_kept_tokens():
    model = tiny_mae().eval()
    images = torch.randn(2, 1, 8, 8)
    m = model.masking(2, generator=torch.Generator().manual_seed(0))
    latent = model.encode(images, m.keep)
    assert latent.shape == (2, 1 + 4, 32)
    full = model.encoder.prepare_tokens(images)
    kept = model.encoder.prepare_tokens(images, keep=m.keep)
    assert torch.equal(kept[:, 1:], full[:, 1:].gather(1, m.keep[..., None].expand(-1, -1, 32)))


def test_a_mask_token_replaces_hidden_patches_before_positions():
    vit = vitkit.create_model("vit_pico_patch2_8", depth=1, mask_token=True).eval()
    images = torch.randn(1, 1, 8, 8)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 3] = True
    tokens = vit.prepare_tokens(images, mask=mask)
    plain = vit.prepare_tokens(images)
    assert torch.equal(tokens[:, :4], plain[:, :4]) and torch.equal(tokens[:, 5:], plain[:, 5:])
    torch.testing.assert_close(tokens[0, 4], vit.mask_token[0, 0] + vit.pos_embed[0, 4])
    with pytest.raises(ValueError, match="no mask token"):
        vitkit.create_model("vit_pico_patch2_8", depth=1).prepare_tokens(images, mask=mask)


# ---- the MAE objective on the one trainer ------------------------------------------------------------------------
def mae_config(tmp_path, name="mae", epochs=2, **kw):
    from vitkit.train import TrainConfig
    return TrainConfig(objective="mae", model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path), name=name,
                       epochs=epochs, batch_size=128, progress=False, threads=1,
                       model_overrides=dict(depth=2, embed_dim=32, num_heads=2), **kw)


def test_mae_pretrains_on_the_trainer_and_its_encoder_fine_tunes(tmp_path):
    from vitkit.train import train
    from vitkit.weights import load_checkpoint
    result = train(mae_config(tmp_path), log=lambda *_: None)
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["val_mse"] > 0 and r["val_mse_patch_mean"] > 0 for r in rows)
    assert rows[0]["val_mse_patch_mean"] == rows[1]["val_mse_patch_mean"]  # fixed validation masks
    best = load_checkpoint(result.run_dir / "best.safetensors")
    assert best.model_name == "mae_vit_pico_patch2_8"
    assert best.data["val_mse"] == min(r["val_mse"] for r in rows)  # lower is better
    assert (result.run_dir / "reconstruction.png").stat().st_size > 10_000

    lines = []
    from vitkit.train import TrainConfig
    tuned = train(TrainConfig(init=str(result.run_dir / "best.safetensors"), data="digits", runs_dir=str(tmp_path),
                              name="ft", epochs=1, batch_size=128, progress=False, threads=1, layer_decay=0.75),
                  log=lines.append)
    assert any("new head for 10 classes (the checkpoint has none)" in line for line in lines), lines
    ft = load_checkpoint(tuned.run_dir / "best.safetensors")
    assert ft.model_name == "vit_pico_patch2_8" and ft.overrides["depth"] == 2
    vit = vitkit.load_pretrained(result.run_dir / "best.safetensors", "vit_pico_patch2_8")  # the encoder, as a ViT
    assert torch.equal(vit.blocks[0].attn.qkv.weight, best.state["encoder.blocks.0.attn.qkv.weight"])


def test_mae_resumes_exactly(tmp_path):
    assert_resumes_exactly(lambda name, epochs: mae_config(tmp_path, name, epochs=epochs), tmp_path, epochs=3)


def test_mae_refuses_label_mixing(tmp_path):
    from vitkit.train import train
    with pytest.raises(ValueError, match="mixup/cutmix mix labels"):
        train(mae_config(tmp_path, mixup=0.8), log=lambda *_: None)
