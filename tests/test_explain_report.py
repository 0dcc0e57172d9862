"""`vitkit explain`: PNG figures and the self-contained HTML report (and, where Chromium exists, its JS)."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")

from vitkit import create_model  # noqa: E402
from vitkit.cli import explain as explain_cmd  # noqa: E402
from vitkit.data import DataError, export_images, load_embedded  # noqa: E402
from vitkit.weights import save_checkpoint  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<b>zero</b>"
DEPTH, HEADS = 3, 4  # vit_pico: 4 heads


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    explain_cmd.add_parser(parser.add_subparsers(dest="command"), "explain")
    return explain_cmd.run(parser.parse_args(["explain", *argv]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    model = create_model("vit_pico_patch2_8", depth=DEPTH)
    classes = [EVIL] + [str(i) for i in range(1, 10)]
    data = {"classes": classes, "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5],
            "source": "digits", "seed": 0, "val_fraction": 0.2}
    ckpt = tmp / "pico.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_pico_patch2_8", overrides={"depth": DEPTH}, data=data)
    images = export_images(load_embedded("digits"), tmp / "images", indices=[0, 1])
    evil = tmp / "images" / "<i>a&b.png"  # a file name that must be escaped too
    shutil.copy(images[0], evil)
    out = tmp / "out"
    assert _run([str(images[1]), str(evil), "--checkpoint", str(ckpt), "--out", str(out),
                 "--top-k", "10"]) == 0  # every class shown, the <b> label included
    return {"tmp": tmp, "ckpt": ckpt, "images": images, "out": out, "html": (out / "report.html").read_text()}


def test_pngs_written(setup):
    pngs = sorted(p.name for p in setup["out"].glob("*.png"))
    for name in ("attention_distance.png", "pos_embed_similarity.png", "patch_embed_filters.png"):
        assert name in pngs
    assert len([p for p in pngs if p.endswith("_cls_attention.png")]) == 2
    assert len([p for p in pngs if p.endswith("_rollout.png")]) == 2
    for p in setup["out"].glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_report_self_contained(setup):
    page = setup["html"]
    assert not re.search(r"https?://", page)
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc=", page)


def test_report_overlay_table(setup):
    page = setup["html"]
    table = json.loads(re.search(r'<script id="overlays" type="application/json">(.*?)</script>', page, re.S)[1])
    assert len(table) == 2  # images
    for per_image in table:
        assert len(per_image) == DEPTH
        assert all(len(opts) == HEADS + 1 for opts in per_image)  # heads + mean
        assert all(uri.startswith("data:image/png;base64,") for opts in per_image for uri in opts)
    # one data URI per overlay option in the table, and they differ between layers
    assert sum(len(opts) for per_image in table for opts in per_image) == 2 * DEPTH * (HEADS + 1)
    assert table[0][0][-1] != table[0][-1][-1]
    layer_sel = re.search(r'<select id="layer">(.*?)</select>', page, re.S)[1]
    assert layer_sel.count("<option") == DEPTH
    head_sel = re.search(r'<select id="head">(.*?)</select>', page, re.S)[1]
    assert head_sel.count("<option") == HEADS + 1 and 'value="mean"' in head_sel
    assert 'id="overlay"' in page and 'id="overlay-1"' in page


def test_report_escapes_labels_and_names(setup):
    page = setup["html"]
    assert EVIL not in page and "<i>a" not in page  # never as markup
    assert "&lt;b&gt;zero&lt;/b&gt;" in page  # the label, shown as text
    assert "&lt;i&gt;a&amp;b.png" in page


def test_layers_option_and_random_model_warning(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run([str(setup["images"][0]), "--model", "vit_pico_patch2_8", "--out", str(out), "--layers", "0", "-1",
                 "--top-k", "3"]) == 0
    assert "random weights" in capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert re.search(r'<select id="layer">(.*?)</select>', page, re.S)[1].count("<option") == 2
    assert page.count('<div class="bar"') == 3


def test_no_cls_token_skips_panels(setup, tmp_path, capsys):
    model = create_model("vit_pico_patch2_8", depth=2, class_token=False, global_pool="avg")
    ckpt = tmp_path / "avg.safetensors"
    save_checkpoint(ckpt, model=model, model_name="vit_pico_patch2_8",
                    overrides={"depth": 2, "class_token": False, "global_pool": "avg"},
                    data={"classes": [str(i) for i in range(10)], "img_size": [8, 8], "in_chans": 1,
                          "mean": [0.5], "std": [0.5]})
    out = tmp_path / "out"
    assert _run([str(setup["images"][0]), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "no [CLS] token" in capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert "no [CLS] token" in page and 'id="layer"' not in page
    assert (out / "attention_distance.png").exists() and not list(out.glob("*_rollout.png"))


def test_unreadable_image_is_named(setup, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        _run([str(bad), "--checkpoint", str(setup["ckpt"]), "--out", str(tmp_path / "out")])


def test_study_uses_validation_images(setup, tmp_path):
    out = tmp_path / "study"
    assert _run(["--study", "-n", "3", "--checkpoint", str(setup["ckpt"]), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("digits val #") == 3
    assert (out / "attention_distance.png").exists() and (out / "pos_embed_similarity.png").exists()


def test_study_needs_checkpoint_and_no_images(setup):
    with pytest.raises(ValueError, match="--checkpoint"):
        _run(["--study", "--model", "vit_pico_patch2_8"])
    with pytest.raises(ValueError, match="drop the IMAGE"):
        _run([str(setup["images"][0]), "--study", "--checkpoint", str(setup["ckpt"])])


# ---- the page's JS, in headless Chromium ------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


def _chromium(args: list[str], profile) -> str:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_hash_selects_layer_in_browser(setup, tmp_path):
    url = (setup["out"] / "report.html").as_uri()

    def overlay_src(fragment: str) -> str:
        dom = _chromium(["--dump-dom", f"{url}#{fragment}"], tmp_path / "profile")
        return re.search(r'<img[^>]*id="overlay"[^>]*>', dom)[0]

    first, last = overlay_src("layer=0"), overlay_src(f"layer={DEPTH - 1}")
    assert first != last
    assert overlay_src(f"layer={DEPTH - 1}&head=mean") == last  # mean is the default head
    assert overlay_src("layer=0&head=1") != first


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_screenshot(setup, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", (setup["out"] / "report.html").as_uri()],
              tmp_path / "profile")
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000


def test_study_picks_the_models_errors_and_a_mix_of_classes():
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    preds = [0, 0, 1, 0, 1, 1, 1, 2, 0, 2]  # errors at 2 (a 0 taken for a 1) and 8 (a 2 taken for a 0)
    assert explain_cmd.study_indices(labels, preds, 4) == [2, 8, 0, 4]  # errors first, then one per class
    assert explain_cmd.study_indices(labels, preds, 6) == [2, 8, 0, 4, 7, 1]
    assert explain_cmd.study_indices(labels, labels, 3) == [0, 4, 7]  # no errors: one of each class
    assert explain_cmd.study_indices([0, 0, 1], [1, 1, 0], 3) == [0, 1, 2]  # only errors: they fill the rest


def test_study_report_names_true_and_predicted_classes(setup, tmp_path):
    out = tmp_path / "study_mix"
    assert _run(["--study", "-n", "6", "--checkpoint", str(setup["ckpt"]), "--out", str(out)]) == 0
    shown = set(re.findall(r"digits val #(\d+) \(true: ([^,]+), (correct|predicted: [^)]+)\)",
                           (out / "report.html").read_text()))
    names = [(true, what) for _, true, what in shown]
    assert len(shown) == 6
    assert len({true for true, _ in names}) >= 3  # a mix of classes, not the first 6 images of one
    assert any(what.startswith("predicted") for _, what in names)  # the random model's errors are shown


# ---- a captioner's report: the caption and the cross-attention of each generated token ----------------------------
CAPTION_VIT = dict(encoder_depth=1, d_model=16, num_heads=2, d_ff=32, decoder_layers=1)
SAT = dict(channels=8, embed_dim=8, hidden=16, attn_dim=8)  # seed 5: a random one writes digits ('0 5 0 5 0')


def _token_table(page: str) -> list[list[str]]:
    return json.loads(re.search(r'<script id="token-overlays" type="application/json">(.*?)</script>', page, re.S)[1])


def _cards(page: str) -> list[str]:
    return re.findall(r'<section class="card">.*?</section>', page, re.S)


@pytest.fixture(scope="module")
def caption_setup(tmp_path_factory):
    """Two strip PNGs, and `vitkit explain` on them with a trained ViT captioner (1 epoch: it writes <bos> tokens)
    and with a random Show-Attend-Tell saved with the same record (it writes digits)."""
    import torch
    from PIL import Image

    from vitkit.data.datasets import TensorImageDataset
    from vitkit.data.strips import DigitStrips
    from vitkit.train import TrainConfig, train
    from vitkit.weights import load_checkpoint

    tmp = tmp_path_factory.mktemp("explain_caption")
    run = train(TrainConfig(objective="caption", data="digit-strips", model="caption_vit_pico_patch4",
                            runs_dir=str(tmp), name="c", epochs=1, batch_size=32, train_size=64, progress=False, threads=1, model_overrides=CAPTION_VIT),
                log=lambda *_: None)
    vit = run.run_dir / "best.safetensors"
    record = load_checkpoint(vit).data
    torch.manual_seed(5)
    sat = tmp / "sat.safetensors"
    save_checkpoint(sat, model=create_model("caption_show_attend_tell", **SAT), model_name="caption_show_attend_tell",
                    overrides=SAT, data=record)
    g = torch.Generator().manual_seed(0)
    digits = TensorImageDataset((torch.rand(40, 1, 28, 28, generator=g) > 0.7).float(), torch.arange(40) % 10,
                                [str(i) for i in range(10)])
    strips = DigitStrips(digits, 2, 0, 5, mean=(0.0,), std=(1.0,))
    paths = []
    for i in range(2):
        paths.append(tmp / f"strip{i}.png")
        Image.fromarray((strips[i][0][0].numpy() * 255).astype("uint8")).save(paths[-1])
    out = {}
    for name, ckpt in (("vit", vit), ("sat", sat)):
        out[name] = tmp / f"out_{name}"
        assert _run([*map(str, paths), "--checkpoint", str(ckpt), "--out", str(out[name])]) == 0
    return {"paths": paths, "ckpt": {"vit": vit, "sat": sat}, "out": out, "record": record,
            "html": {name: (o / "report.html").read_text() for name, o in out.items()}}


def test_caption_attention_gives_one_map_per_generated_token_on_the_place_grid():
    import torch

    from vitkit.explain import caption_attention, place_grid
    for name, over in (("caption_vit_pico_patch4", CAPTION_VIT), ("caption_show_attend_tell", SAT)):
        torch.manual_seed(5)
        model = create_model(name, **over).eval()
        grid = place_grid(model)
        assert grid == (7, 28)  # 28×112 strips: 4-pixel patches (the ViT), stride 4 (the CNN)
        for ids, maps in caption_attention(model, torch.randn(2, 1, 28, 112), 5):
            assert 1 <= len(ids) <= 5 and 2 not in ids[:-1]  # EOS, where emitted, ends them
            assert maps.shape == (len(ids), *grid) and torch.isfinite(maps).all()
            assert (maps.flatten(1).sum(1) <= 1 + 1e-5).all()  # weights over the places ([CLS] left out)


@pytest.mark.parametrize("name", ["vit", "sat"])
def test_caption_report_has_a_token_selector_and_one_overlay_per_token(caption_setup, name):
    page, out = caption_setup["html"][name], caption_setup["out"][name]
    table, cards = _token_table(page), _cards(page)
    tokens = [re.findall(r'<span class="tok[^"]*">(.*?)</span>', card) for card in cards]
    assert len(table) == len(cards) == 2 and all(tokens)
    assert [len(t) for t in table] == [len(t) for t in tokens]  # one overlay per generated token
    assert all(uri.startswith("data:image/png;base64,") for t in table for uri in t)
    options = re.findall(r'<option value="(\d+)"', re.search(r'<select id="token">(.*?)</select>', page, re.S)[1])
    assert options == [str(t + 1) for t in range(max(map(len, tokens)))]
    assert len(set(table[0])) == len(table[0]) > 1  # the maps differ between tokens
    pngs = sorted(p.name for p in out.glob("*_cross_attention.png"))
    assert len(pngs) == sum(map(len, table)) and "00_strip0_token1_cross_attention.png" in pngs
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in out.glob("*.png"))
    assert 'id="layer"' not in page and 'id="head"' not in page  # one layer, averaged over heads
    assert 'width="448" height="112"' in page  # 28×112 strips keep their aspect
    assert not re.search(r"https?://", page) and not re.search(r"<script[^>]*\bsrc=", page)


def test_caption_report_shows_each_image_s_caption(caption_setup):
    from vitkit.cli.caption import caption_images
    from vitkit.weights import load_checkpoint

    paths = [str(p) for p in caption_setup["paths"]]
    for name in ("vit", "sat"):
        model = load_checkpoint(caption_setup["ckpt"][name]).build_model().eval()
        captions = caption_images(model, paths, caption_setup["record"])  # as `vitkit caption` prints them
        cards = _cards(caption_setup["html"][name])
        for card, path, caption in zip(cards, paths, captions):
            assert path in card
            assert (f'<q class="caption">{caption}</q>' if caption else "<em>(empty)</em>") in card
    assert caption_images(load_checkpoint(caption_setup["ckpt"]["sat"]).build_model().eval(), paths,
                          caption_setup["record"])[0]  # the random Show-Attend-Tell's caption is not empty


def test_caption_report_refuses_study_and_layers(caption_setup):
    ckpt = str(caption_setup["ckpt"]["sat"])
    with pytest.raises(ValueError, match="does not record"):
        _run(["--study", "--checkpoint", ckpt])
    with pytest.raises(ValueError, match="drop --layers"):
        _run([str(caption_setup["paths"][0]), "--checkpoint", ckpt, "--layers", "0"])
    with pytest.raises(ValueError, match="pass --checkpoint"):
        _run([str(caption_setup["paths"][0]), "--model", "caption_show_attend_tell"])


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_hash_selects_token_in_browser(caption_setup, tmp_path):
    table = _token_table(caption_setup["html"]["sat"])
    url = (caption_setup["out"]["sat"] / "report.html").as_uri()

    def dom(fragment: str) -> str:
        return _chromium(["--dump-dom", f"{url}#{fragment}"], tmp_path / "profile")

    def overlay_src(page: str, i: int = 0) -> str:
        return re.search(rf'<img[^>]*id="{"overlay" if i == 0 else f"overlay-{i}"}"[^>]*>', page)[0]

    page = dom("token=2")
    selected = re.findall(r'<option value="(\d+)"[^>]*\bselected', re.search(r'<select id="token">(.*?)</select>',
                                                                               page, re.S)[1])
    assert selected == ["2"]
    assert f'src="{table[0][1]}"' in overlay_src(page) and f'src="{table[1][1]}"' in overlay_src(page, 1)
    assert "writing token 2" in page and len(re.findall(r'class="tok sel"', page)) == 2  # each card marks token 2
    first = dom("token=1")
    assert f'src="{table[0][0]}"' in overlay_src(first) and overlay_src(first) != overlay_src(page)
    assert overlay_src(dom("token=99")) == overlay_src(first)  # no such token: the first
