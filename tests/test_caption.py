"""Captioning: the digit strips, the captioners' seams and decoding, the objective on the trainer, `vitkit caption`."""
from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit.data import split
from vitkit.data.datasets import TensorImageDataset
from vitkit.data.strips import STRIP, DigitStrips
from vitkit.generate import beam_search, greedy
from vitkit.train import TrainConfig, train
from vitkit.train.caption import caption_metrics
from vitkit.weights import load_checkpoint

from resume import assert_resumes_exactly

TINY_DECODER = dict(d_model=16, num_heads=2, d_ff=32, decoder_layers=1)
TINY_VIT = dict(encoder_depth=1, **TINY_DECODER)


def fake_digits(n=40):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float()
    return TensorImageDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)])


def test_a_strip_holds_its_digits_left_to_right_and_its_caption_names_them():
    digits = fake_digits()
    ds = DigitStrips(digits, 50, seed=0, key=1, mean=(0.0,), std=(1.0,))
    for i in range(50):
        image, caption = ds[i]
        assert image.shape == (1, *STRIP)
        layout, spans = ds.layout(i), ds.spans(i)
        assert 1 <= len(layout) <= 4 and len(spans) == len(layout)
        assert all(0 <= x0 and x1 <= STRIP[1] for x0, x1 in spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # left to right, never overlapping
        for (p, x), (x0, x1) in zip(layout, spans):
            assert torch.equal(image[:, :, x0:x1], digits[p][0])  # the digit image itself, pasted
        words = ds.vocab.decode(caption[1:])
        assert words == " ".join(str(int(digits[p][1])) for p, _ in layout)
    assert torch.equal(ds[7][0], DigitStrips(digits, 50, seed=0, key=1, mean=(0.0,), std=(1.0,))[7][0])


def test_held_out_strips_use_only_held_out_digit_images():
    digits = fake_digits()
    train_digits, val_digits = split(digits, 0.25, seed=0)
    val = DigitStrips(val_digits, 30, seed=0, key=2)
    held_out = set(val_digits.indices)
    for i in range(30):
        assert all(val_digits.indices[p] in held_out for p, _ in val.layout(i))
        assert all(p < len(val_digits) for p, _ in val.layout(i))
    assert not held_out & set(train_digits.indices)


def test_fresh_training_strips_are_drawn_anew_each_epoch_from_the_item_key():
    ds = DigitStrips(fake_digits(), 20, seed=0, key=1, fresh=True)
    epoch = lambda e: [ds.layout(i, e) for i in range(20)]  # noqa: E731
    assert epoch(0) != epoch(1) and epoch(1) == epoch(1)
    key = (0, 3, 0, 0, 0, 5)  # (seed, epoch, step, micro-batch, 0, position): the runtime's item key
    assert torch.equal(ds[(5, key)][0], ds[(5, key)][0])
    layout = ds.layout(5, 3)
    image, caption = ds[(5, key)]
    assert ds.vocab.decode(caption[1:]) == " ".join(str(int(ds.digits[p][1])) for p, _ in layout)
    assert torch.equal(image[:, :, layout[0][1]:layout[0][1] + 28], (ds.digits[layout[0][0]][0] - 0.5) / 0.5)
    fixed = DigitStrips(fake_digits(), 20, seed=0, key=1)  # validation strips: the index alone
    assert torch.equal(fixed[(5, key)][0], fixed[5][0])


def test_a_cnn_encoder_s_feature_map_is_the_captioner_s_place_grid():
    model = vitkit.create_model("caption_resnet_pico", **TINY_DECODER).eval()
    assert model.place_grid() == (0, 4, 14)  # a stride-8 map of the 28×112 strip
    x = model.token_x()
    assert len(x) == 56 and not x.isnan().any() and len(x.unique()) == 14 and x.min() == 4.0
    weights = model.align(torch.randn(2, 1, *STRIP), torch.ones(2, 3, dtype=torch.long))
    assert weights.shape == (2, 3, 56)


def test_show_attend_tell_reads_a_registered_cnn_s_feature_map():
    model = vitkit.create_model("caption_show_attend_tell", encoder="resnet_pico_28", embed_dim=8, hidden=16,
                                attn_dim=8).eval()
    assert model.place_grid() == (0, 4, 14) and len(model.token_x().unique()) == 14
    images = torch.randn(2, 1, *STRIP)
    assert model.encode(images).states.shape == (2, 56, 64)  # resnet_pico_28's 64 channels at 56 places
    assert torch.equal(greedy(model, images, 5), beam_search(model, images, 5, beam=1))


@pytest.mark.parametrize("name", ["caption_vit_pico_patch4", "caption_show_attend_tell"])
def test_captioners_decode_the_same_with_and_without_the_cache(name):
    torch.manual_seed(0)
    over = TINY_VIT if name == "caption_vit_pico_patch4" else dict(channels=8, embed_dim=8, hidden=16, attn_dim=8)
    model = vitkit.create_model(name, **over).eval()
    images = torch.randn(3, 1, *STRIP)
    out = greedy(model, images, 5)
    assert torch.equal(out, greedy(model, images, 5, cache=False))
    assert torch.equal(beam_search(model, images, 5, beam=1), out)
    assert torch.equal(beam_search(model, images, 5, beam=3), beam_search(model, images, 5, beam=3, cache=False))
    weights = model.align(images, torch.ones(3, 4, dtype=torch.long))
    places = ~torch.isnan(model.token_x())
    assert weights.shape[:2] == (3, 4) and weights.shape[2] == len(places) == 196 + (name != "caption_show_attend_tell")
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-5)
    x = model.token_x()[places]
    assert x.min() > 0 and x.max() < STRIP[1] and len(x.unique()) == 28  # 28 columns of 4 pixels


def test_show_attend_tell_s_regulariser_is_lambda_times_one_minus_total_attention_squared():
    torch.manual_seed(0)
    model = vitkit.create_model("caption_show_attend_tell", channels=8, embed_dim=8, hidden=16, attn_dim=8,
                                alpha_c=0.5).eval()
    images, tgt = torch.randn(2, 1, *STRIP), torch.tensor([[1, 4, 5, 0], [1, 6, 7, 8]])
    model(images, tgt)
    alphas = model.align(images, tgt)  # (B, T, N)
    real = (tgt != 0)[..., None].float()
    want = 0.5 * ((1 - (alphas * real).sum(1)) ** 2).mean()
    torch.testing.assert_close(model.penalty, want)


def test_caption_metrics():
    vocab = DigitStrips(fake_digits(), 1, 0, 0).vocab
    target = torch.tensor([[4, 5, 6, 7, 2], [3, 2, 0, 0, 0]])
    same = caption_metrics(target, target, vocab)
    assert same == {"exact": 1.0, "token_acc": 1.0, "word_acc": 1.0, "bleu": pytest.approx(100.0)}
    wrong = caption_metrics(torch.tensor([[4, 5, 6, 8, 2], [3, 2, 0, 0, 0]]), target, vocab)
    assert wrong["exact"] == 0.5 and wrong["token_acc"] == pytest.approx(6 / 7) and wrong["bleu"] < 100
    assert wrong["word_acc"] == pytest.approx(4 / 5)  # five digits, one wrong; the two EOS left out


def caption_cfg(tmp_path, name, epochs=1, **kw):
    return TrainConfig(objective="caption", data="digit-strips", runs_dir=str(tmp_path), name=name, epochs=epochs,
                       batch_size=32, train_size=64, progress=False, threads=1, model_overrides=dict(TINY_VIT),
                       **{"model": "caption_vit_pico_patch4", **kw})


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caption")
    return train(caption_cfg(tmp, "c"), log=lambda *_: None)


def test_the_caption_objective_trains_and_reports_greedy_beam_and_attention(caption_run):
    row = caption_run.metrics[-1]
    assert {"val_exact", "val_token_acc", "val_word_acc", "val_bleu"} <= set(row)
    result = json.loads((caption_run.run_dir / "captions.json").read_text())
    assert set(result["greedy"]) == {"exact", "token_acc", "word_acc", "bleu"} and set(result["beam4"]) == set(result["greedy"])
    assert 0 <= result["attention"]["argmax_in_span"] <= 1 and result["attention"]["digits"] > 1000
    assert (caption_run.run_dir / "attention.png").stat().st_size > 5_000
    record = load_checkpoint(caption_run.run_dir / "best.safetensors").data
    assert record["vocab"][3:] == [str(i) for i in range(10)] and record["img_size"] == list(STRIP)


def test_vitkit_caption_prints_each_image_s_greedy_caption(caption_run, tmp_path, capsys):
    from PIL import Image

    from vitkit.cli import main
    ckpt = caption_run.run_dir / "best.safetensors"
    strips_ = DigitStrips(fake_digits(), 3, 0, 5, mean=(0.0,), std=(1.0,))
    paths = []
    for i in range(3):
        path = tmp_path / f"s{i}.png"
        Image.fromarray((strips_[i][0][0].numpy() * 255).astype("uint8")).save(path)
        paths.append(str(path))
    assert main(["caption", str(ckpt), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    from vitkit.cli.caption import caption_images
    model = load_checkpoint(ckpt).build_model()
    assert [line.split("\t")[1] for line in lines] == caption_images(model, paths, load_checkpoint(ckpt).data)
    assert main(["caption", str(ckpt), str(tmp_path / "missing.png")]) != 0


def test_caption_resumes_exactly(tmp_path):
    assert_resumes_exactly(lambda name, epochs: caption_cfg(tmp_path, name, epochs), tmp_path)


def test_the_caption_encoder_starts_from_an_mnist_vit(tmp_path):
    vit = train(TrainConfig(data="mnist", model="vit_pico_patch4_28", runs_dir=str(tmp_path), name="vit", epochs=1,
                            batch_size=64, train_size=128, progress=False, threads=1,
                            model_overrides=dict(depth=1)), log=lambda *_: None)
    lines = []
    run = train(caption_cfg(tmp_path, "from-vit", init=str(vit.run_dir / "best.safetensors"),
                            model="caption_vit_pico_patch4"), log=lines.append)
    assert any("initialised from" in line for line in lines), lines
    state = load_checkpoint(run.run_dir / "last.safetensors").state
    assert state["encoder.pos_embed"].shape[1] == 1 + 7 * 28  # resized from MNIST's 7×7 grid to the strip's


def test_an_image_folder_with_a_captions_file_trains(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(6):
        pixels = (torch.rand(20, 30, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"p{i}.png")
        lines.append(f"p{i}.png\ta {'red' if i % 2 else 'blue'} thing")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    run = train(TrainConfig(objective="caption", data=str(folder), runs_dir=str(tmp_path), name="f", epochs=1,
                            batch_size=2, progress=False, threads=1, val_fraction=0.34,
                            model_overrides=dict(TINY_DECODER, img_size=(16, 16), in_chans=3)), log=lambda *_: None)
    record = load_checkpoint(run.run_dir / "best.safetensors").data
    assert record["task"] == "folder" and {"a", "red", "blue", "thing"} <= set(record["vocab"])
    assert record["img_size"] == [16, 16] and record["in_chans"] == 3
    (folder / "captions.txt").write_text("p0.png\ta thing\nmissing.png\ta thing\n")
    from vitkit.data.datasets import DataError
    with pytest.raises(DataError, match="missing.png, which is not a file"):
        train(TrainConfig(objective="caption", data=str(folder), runs_dir=str(tmp_path), name="g", epochs=1,
                          progress=False, model_overrides=dict(TINY_DECODER, img_size=(16, 16), in_chans=3)),
              log=lambda *_: None)


def test_vitkit_data_exports_the_held_out_strips_as_a_captioned_folder(tmp_path, capsys):
    from vitkit.cli import main
    from vitkit.data.strips import read_captions
    from vitkit.train.caption import VAL_KEY, VAL_STRIPS
    assert main(["data", "export", "digit-strips", str(tmp_path / "s"), "--count", "3"]) == 0
    items = read_captions(tmp_path / "s" / "captions.txt", tmp_path / "s")
    _, val_digits = split(vitkit.data.build_dataset("mnist"), 0.2, 0)
    strips = DigitStrips(val_digits, VAL_STRIPS, 0, VAL_KEY, mean=(0.0,), std=(1.0,))
    assert [c for _, c in items] == [strips.vocab.decode(strips[i][1][1:]) for i in range(3)]
    from vitkit.data.datasets import load_image
    image = load_image(tmp_path / "s" / items[0][0], in_chans=1)
    assert image.shape == (1, *STRIP) and (image - strips[0][0]).abs().max() <= 1 / 255
