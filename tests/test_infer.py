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
