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
