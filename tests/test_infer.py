"""vitkit.infer: micro-batched inference gives the logits of one big batch, and its size follows the budget."""
from __future__ import annotations

import pytest
import torch

from vitkit import create_model
from vitkit.infer import largest_activation_bytes, micro_batch_size, predict_logits


@pytest.mark.parametrize("name, overrides", [
    ("vit_tiny_patch16_224", "tiny_vit"),
    ("resnet18", None),  # BatchNorm: in eval mode each image is still independent
])
def test_micro_batches_give_the_logits_of_one_batch(request, name, overrides):
    kw = request.getfixturevalue(overrides) if overrides else {}
    model = create_model(name, **kw).eval()
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
    for n in (1, 3, 7, 100, None):  # uneven last micro-batch, the whole batch, more than the batch, none
        torch.testing.assert_close(predict_logits(model, x, n), whole, atol=1e-5, rtol=0)


def test_predict_logits_runs_in_eval_mode_and_restores_the_mode(tiny_vit):
    model = create_model("vit_tiny_patch16_224", drop_rate=0.5, **tiny_vit).train()
    x = torch.randn(4, 3, 32, 32)
    a, b = predict_logits(model, x, 2), predict_logits(model, x, 2)
    assert torch.equal(a, b)  # no dropout
    assert model.training and not a.requires_grad


def test_predict_logits_refuses_bad_input(tiny_vit):
    model = create_model("vit_tiny_patch16_224", **tiny_vit)
    with pytest.raises(ValueError, match="empty"):
        predict_logits(model, torch.randn(0, 3, 32, 32))
    with pytest.raises(ValueError, match="positive"):
        predict_logits(model, torch.randn(2, 3, 32, 32), -1)


def test_largest_activation_is_the_mlp_hidden_tensor(tiny_vit):
    # 32×32 at patch 16: 4 patches + [CLS] = 5 tokens; MLP hidden 4·48 = 192 floats per token
    model = create_model("vit_tiny_patch16_224", num_classes=10, **tiny_vit)
    assert largest_activation_bytes(model, 32) == 5 * 192 * 4
    # with 1,000 classes the logits (4,000 bytes) are the largest
    assert largest_activation_bytes(create_model("vit_tiny_patch16_224", **tiny_vit), 32) == 1000 * 4


def test_micro_batch_size_follows_the_budget_and_balances_the_split(tiny_vit):
    model = create_model("vit_tiny_patch16_224", num_classes=10, **tiny_vit)
    per_image = 5 * 192 * 4
    assert micro_batch_size(model, 32, budget_bytes=5 * per_image) == 5
    assert micro_batch_size(model, 32, 12, budget_bytes=5 * per_image) == 4   # 12 → 4 + 4 + 4, not 5 + 5 + 2
    assert micro_batch_size(model, 32, 3, budget_bytes=5 * per_image) == 3    # the batch already fits
    assert micro_batch_size(model, 32, 12, budget_bytes=1) == 1               # at least one image


def test_micro_batch_size_off_the_cpu_keeps_the_batch(tiny_vit):
    model = create_model("vit_tiny_patch16_224", **tiny_vit)
    assert micro_batch_size(model, 32, 64, device="meta") == 64  # a GPU wants the whole batch; nothing is run


# ---- classifying image files ------------------------------------------------------------------------------------
class _NaNModel(torch.nn.Module):
    def forward(self, x):
        out = torch.zeros(x.shape[0], 3)
        out[-1] = float("nan")  # the last image of each batch
        return out


def test_nan_probabilities_are_an_error_naming_the_image(tmp_path):
    from vitkit.data import export_images, load_embedded
    from vitkit.infer import iter_classify

    paths = export_images(load_embedded("digits"), tmp_path, indices=[0, 1, 2])
    record = {"img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5], "classes": ["a", "b", "c"]}
    rows = iter_classify(_NaNModel(), record, paths, top_k=2, batch_size=2)
    assert [t["label"] for t in next(rows)["top"]] == ["a", "b"]  # streamed: the first batch's good image comes out
    with pytest.raises(FloatingPointError, match=rf"non-finite scores \(NaN or inf\) for {paths[1]}"):
        list(rows)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_amx_or_avx512_bf16(monkeypatch, capsys):
    import vitkit.infer as infer

    monkeypatch.setattr(infer, "cpu_flags", lambda: {"sse4_2", "avx2", "avx512f"})  # no bf16 units
    assert infer.cpu_runs_bf16_fast() is False
    assert infer.resolve_bf16(True) is False
    assert "neither AMX nor AVX-512 BF16" in capsys.readouterr().err and infer.resolve_bf16(False) is False
    for flags in ({"avx512f", "avx512_bf16"}, {"amx_bf16", "amx_tile"}):
        monkeypatch.setattr(infer, "cpu_flags", lambda flags=flags: flags)
        assert infer.resolve_bf16(True) is True and capsys.readouterr().err == ""
    monkeypatch.setattr(infer, "cpu_flags", lambda: None)  # no /proc/cpuinfo: as asked
    assert infer.cpu_runs_bf16_fast() is None and infer.resolve_bf16(True) is True


def test_cpu_flags_are_read_from_proc_cpuinfo():
    import os

    from vitkit.infer import cpu_flags
    flags = cpu_flags()
    if not os.path.exists("/proc/cpuinfo"):
        assert flags is None
    else:
        assert flags and all(isinstance(f, str) for f in flags)
