"""The cost model: the lecture's attention-memory figures, parameter and FLOP counts, the CLI."""
import argparse
import json
import math

import pytest
import torch

from vitkit import create_model
from vitkit.analysis import (attention_matrix_memory, complexity_table, cost_report, count_flops, count_params,
                             lecture_figures, measured_flops)
from vitkit.analysis.cost import GiB, KiB, MiB, activation_memory, build_meta
from vitkit.cli import cost as cost_cli


# ---- the lecture's figures --------------------------------------------------------------------------
def test_lecture_vit_b16_per_matrix():
    lec = lecture_figures()["vit_patch16_224_patch_only"]
    # 224/16 = 14 patches a side → N = 14² = 196 tokens → N² = 14⁴ = 38,416 entries per matrix
    assert lec["tokens"] == 196 and lec["entries_per_matrix"] == 14 ** 4 == 38_416
    # × 4 bytes (fp32) = 153,664 B = 150.06 KiB: the slides' "≈150 KB" is KiB (decimal would be 153.7 kB)
    assert lec["bytes_per_matrix"] == 153_664
    assert round(lec["KiB_per_matrix"]) == 150 and lec["bytes_per_matrix"] / 1000 > 153
    # with [CLS]: N = 197 → 197² = 38,809
    assert lecture_figures()["vit_patch16_224_with_cls"]["entries_per_matrix"] == 197 ** 2 == 38_809


def test_lecture_48_layers_16_heads():
    lec = lecture_figures()["vit_patch16_224_patch_only"]
    # 48 layers × 16 heads × 153,664 B = 118,013,952 B = 112.55 MiB: the slides' "112 MB" is MiB
    # (truncated); decimal it would be 118.0 MB, which is not the figure printed
    assert (lec["layers"], lec["heads"]) == (48, 16)
    assert lec["bytes_total"] == 48 * 16 * 153_664 == 118_013_952
    assert math.floor(lec["MiB_total"]) == 112 and math.floor(lec["bytes_total"] / 1e6) == 118


def test_lecture_pixel_attention_768_gb():
    pix = lecture_figures()["pixels_128x128"]
    # each pixel a token: N = 128·128 = 16,384; N² = 268,435,456 = 2²⁸ entries
    assert pix["tokens"] == 16_384 and pix["entries_per_matrix"] == 268_435_456 == 2 ** 28
    # × 4 bytes = 2³⁰ B = 1 GiB per matrix; × 48 layers × 16 heads = 768 GiB → the slides' "768 GB" is GiB
    assert pix["bytes_per_matrix"] == GiB
    assert pix["bytes_total"] == 768 * GiB and pix["GiB_total"] == 768.0
    assert round(pix["bytes_total"] / 1e9, 1) == 824.6  # in decimal GB it would read 824.6


def test_lecture_swin_patch4():
    swin = lecture_figures()["swin_patch4_224_global"]
    # 224 / 4 = 56 patches a side → 56² = 3,136 tokens → 56⁴ = 9,834,496 ≈ 9.8 M entries before windows
    assert swin["tokens"] == 56 * 56 == 3_136
    assert swin["entries_per_matrix"] == 56 ** 4 == 9_834_496
    assert round(swin["M_entries_per_matrix"], 1) == 9.8


def test_attention_memory_scales_and_fused_is_linear():
    a = attention_matrix_memory(196, heads=12, layers=12, bytes_per=2, batch=8)
    assert a["bytes_per_matrix"] == 38_416 * 2
    assert a["bytes_per_layer"] == 8 * 12 * 38_416 * 2
    assert a["bytes_total"] == 12 * a["bytes_per_layer"]
    # fused: one fp32 log-sum-exp per query per head, so doubling N doubles it (not ×4)
    b = attention_matrix_memory(392, heads=12, layers=12, bytes_per=2, batch=8)
    assert b["fused_bytes_total"] == 2 * a["fused_bytes_total"]
    assert b["bytes_total"] == 4 * a["bytes_total"]


def test_activation_memory_fused_drops_only_the_matrices():
    m = build_meta("vit_base_patch16_224")
    explicit, fused = activation_memory(m, batch=4), activation_memory(m, batch=4, fused=True)
    # 12 layers × 12 heads × 197² × 4 B × batch 4
    assert explicit["bytes_attention_matrices"] == 4 * 12 * 12 * 197 ** 2 * 4
    assert explicit["bytes_total"] - explicit["bytes_attention_matrices"] == \
        fused["bytes_total"] - fused["bytes_attention_matrices"]
    assert fused["bytes_attention_matrices"] == 4 * 12 * 12 * 197 * 4


# ---- the complexity table ---------------------------------------------------------------------------
def test_complexity_table():
    n, d, k, r = 196, 768, 3, 16
    rows = {row["layer"]: row for row in complexity_table(n, d, k, r)}
    sa, rnn = rows["self-attention"], rows["recurrent"]
    conv, restricted = rows["convolutional"], rows["self-attention (restricted)"]
    assert sa["complexity"] == 196 ** 2 * 768 == 29_503_488          # n²·d
    assert rnn["complexity"] == 196 * 768 ** 2 == 115_605_504        # n·d²
    assert conv["complexity"] == 3 * 196 * 768 ** 2 == 346_816_512   # k·n·d²
    assert restricted["complexity"] == 16 * 196 * 768 == 2_408_448   # r·n·d
    assert [row["sequential_ops"] for row in rows.values()] == [1, 196, 1, 1]
    assert sa["max_path"] == 1 and rnn["max_path"] == 196
    assert conv["max_path"] == pytest.approx(math.log(196, 3))      # log_k n ≈ 4.80
    assert restricted["max_path"] == pytest.approx(196 / 16)         # n/r = 12.25
    # self-attention is cheaper than recurrence exactly when n < d
    assert sa["complexity"] < rnn["complexity"]


# ---- parameters -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_base_patch16_224", "vit_tiny_patch16_224", "vit_large_patch16_384",
                                  "deit_small_distilled_patch16_224", "vit_pico_patch2_8",
                                  "swin_tiny_patch4_window7_224"])
def test_param_components_sum_to_total(name):
    model = build_meta(name)
    params = count_params(model)
    total = params.pop("total")
    assert sum(params.values()) == total == sum(p.numel() for p in model.parameters())


def test_vit_base_param_components():
    p = count_params(build_meta("vit_base_patch16_224"))
    assert p["total"] == 86_567_656 and p["other"] == 0
    assert p["patch_embed"] == 768 * 3 * 16 * 16 + 768
    assert p["pos_embed_tokens"] == 197 * 768 + 768                 # 197 positions + [CLS]
    assert p["attn_qkv"] == 12 * (768 * 3 * 768 + 3 * 768)
    assert p["attn_proj"] == 12 * (768 * 768 + 768)
    assert p["mlp"] == 12 * (768 * 3072 + 3072 + 3072 * 768 + 768)
    assert p["norms"] == (2 * 12 + 1) * 2 * 768
    assert p["head"] == 768 * 1000 + 1000


# ---- FLOPs ------------------------------------------------------------------------------------------
def test_vit_base_flops_components():
    f = count_flops(build_meta("vit_base_patch16_224"))
    N, D = 197, 768
    assert f["attn_qk"] == f["attn_av"] == 12 * 2 * N * N * D
    assert f["mlp"] == 12 * 2 * N * D * 3072 * 2
    assert f["total"] / 2 / 1e9 == pytest.approx(17.56, abs=0.01)  # the familiar 17.6 GMACs of ViT-B/16


@pytest.mark.parametrize("name, overrides", [
    ("vit_pico_patch2_8", {}),
    ("vit_tiny_patch16_224", dict(img_size=64, depth=2, head_hidden_size=96)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2)),
    ("vit_tiny_patch16_224", {}),
])
def test_flops_agree_with_flop_counter(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    counted, measured = count_flops(model)["total"], measured_flops(model)
    assert counted == pytest.approx(measured, rel=0.02)


def test_non_vit_reports_params_only():
    r = cost_report("convnext_atto")
    assert r.flops is None and r.params["total"] > 0 and "ViT-family" in r.note


# ---- the CLI ----------------------------------------------------------------------------------------
def _run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="vitkit")
    cost_cli.add_parser(parser.add_subparsers(dest="command"), "cost")
    code = cost_cli.run(parser.parse_args(["cost", *argv]))
    return code, capsys.readouterr().out


def test_cli_json_contains_lecture_figures(capsys):
    code, out = _run(capsys, "vit_base_patch16_224", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["params"]["total"] == 86_567_656
    assert data["attention_patch_only"]["entries_per_matrix"] == 38_416
    assert data["attention"]["entries_per_matrix"] == 38_809
    lec = data["lecture"]
    assert lec["vit_patch16_224_patch_only"]["entries_per_matrix"] == 38_416
    assert lec["vit_patch16_224_patch_only"]["bytes_per_matrix"] == 153_664       # ≈150 KiB
    assert lec["vit_patch16_224_patch_only"]["bytes_total"] == 118_013_952        # 112.5 MiB
    assert lec["pixels_128x128"]["GiB_total"] == 768.0


def test_cli_layers_heads_override_reproduces_112_mib(capsys):
    code, out = _run(capsys, "vit_base_patch16_224", "--layers", "48", "--heads", "16", "--json")
    a = json.loads(out)["attention_patch_only"]
    assert a["bytes_total"] == 118_013_952 and a["bytes_total"] / MiB == pytest.approx(112.55, abs=0.01)
    assert a["bytes_per_matrix"] / KiB == pytest.approx(150.06, abs=0.01)


def test_cli_dtype_and_batch(capsys):
    _, out = _run(capsys, "vit_tiny_patch16_224", "--dtype", "bf16", "--batch", "8", "--img-size", "384", "--json")
    a = json.loads(out)["attention"]
    assert a["tokens"] == 24 * 24 + 1 and a["bytes_per_matrix"] == a["entries_per_matrix"] * 2
    assert a["bytes_per_layer"] == 8 * 3 * a["bytes_per_matrix"]


def test_cli_table(capsys):
    code, out = _run(capsys, "vit_base_patch16_224")
    assert code == 0
    for text in ("38,416", "150.06 KiB", "112.55 MiB", "768.00 GiB", "35,127,656,448"):
        assert text in out


def test_unknown_model_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown model 'vit_bse_patch16_224'.*did you mean"):
        cost_report("vit_bse_patch16_224")
    with pytest.raises(ValueError, match="dtype must be one of"):
        cost_report("vit_tiny_patch16_224", dtype="int8")


def test_cli_gives_gflops_and_the_lecture_only_for_its_example(capsys):
    _, out = _run(capsys, "vit_base_patch16_224")
    assert "GFLOPs per image" in out and "mlp                     22.310 GFLOPs    63.5%" in out
    assert "total                   35.128 GFLOPs" in out and "lecture figures" in out
    _, out = _run(capsys, "vit_pico_patch2_8")
    assert "MFLOPs per image" in out and "total                    7.138 MFLOPs" in out  # no 0.007 GFLOPs
    assert "lecture figures" not in out and "--lecture prints them" in out
    _, out = _run(capsys, "vit_pico_patch2_8", "--lecture")
    assert "lecture figures" in out and "112.55 MiB" in out
    _, out = _run(capsys, "vit_pico_patch2_8", "--json")
    assert json.loads(out)["lecture"] is None
    _, out = _run(capsys, "vit_base_patch16_224", "--img-size", "384")  # 576 patches: not the lecture's example
    assert "lecture figures" not in out


def test_cli_dtypes_are_the_cost_models():
    from vitkit.analysis.cost import DTYPE_BYTES
    assert cost_cli.DTYPES == tuple(DTYPE_BYTES)
