"""DINO: the head, the loss, the teacher and centre updates, the k-NN evaluator, and the objective on the trainer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models.dino import DINOHead, dino_loss
from vitkit.train import TrainConfig, train
from vitkit.train.dino import MultiCrop, knn_predict
from vitkit.weights import load_checkpoint

TINY = dict(depth=2, embed_dim=32, num_heads=2, out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops=2)


def test_the_head_is_an_mlp_then_a_cosine_layer_with_frozen_gains():
    head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4, nlayers=3, norm_last_layer=True)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert not head.last_layer.weight_g.requires_grad and head.last_layer.weight_v.requires_grad
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 10) and out.abs().max() <= 1 + 1e-6  # unit vectors against unit rows: cosines
    bottleneck = F.normalize(head.mlp(torch.ones(1, 8)), dim=-1)
    v = head.last_layer.weight_v
    torch.testing.assert_close(head(torch.ones(1, 8)), bottleneck @ (v / v.norm(dim=1, keepdim=True)).T)


def test_the_loss_is_the_cross_entropy_of_each_teacher_view_with_every_other_student_view():
    torch.manual_seed(0)
    B, K, views = 3, 5, 4
    student, teacher, center = torch.randn(views * B, K), torch.randn(2 * B, K), torch.randn(1, K)
    got = dino_loss(student, teacher, center, views, 2, 0.1, 0.04)
    terms = []
    for i in range(2):
        t = torch.softmax((teacher[i * B:(i + 1) * B] - center) / 0.04, -1)
        for j in range(views):
            if j != i:
                s = torch.log_softmax(student[j * B:(j + 1) * B] / 0.1, -1)
                terms.append(-(t * s).sum(-1).mean())
    assert len(terms) == 2 * views - 2
    torch.testing.assert_close(got, torch.stack(terms).mean())


def test_teacher_and_centre_updates_follow_the_formulas():
    model = vitkit.create_model("dino_vit_pico_patch2_8", **TINY)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    t0 = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.9)
    for t, old, s in zip(model.teacher.parameters(), t0, model.student.parameters()):
        torch.testing.assert_close(t, 0.9 * old + 0.1 * s)
    mean = torch.randn(64)
    model.update_center(mean, 0.9)
    torch.testing.assert_close(model.center, 0.1 * mean[None])
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_knn_votes_are_weighted_by_exp_similarity():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 0, 1])
    q = F.normalize(torch.tensor([[0.1, 1.0], [1.0, 0.2]]), dim=-1)
    assert knn_predict(bank, labels, q, 2, k=1).tolist() == [1, 0]
    # k = 3: two far votes of class 0 lose to one near vote of class 1 once the temperature is small
    near = F.normalize(torch.tensor([[0.0, 1.0]]), dim=-1)
    assert knn_predict(bank, labels, near, 2, k=3, temperature=0.07).tolist() == [1]
    assert math.isclose(float((bank @ near.T).squeeze()[2]), 1.0)


def test_multi_crop_gives_two_global_and_the_local_views():
    crop = MultiCrop((8, 8), (4, 4), (0.4, 1.0), (0.05, 0.4), 3, (0.5,), (0.5,))
    views = crop(torch.rand(1, 8, 8), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(1, 8, 8)] * 2 + [(1, 4, 4)] * 3
    again = crop(torch.rand(1, 8, 8).fill_(0.3), torch.Generator().manual_seed(0))
    assert all(torch.allclose(v, torch.full_like(v, -0.4)) for v in again)  # normalised: (0.3 - 0.5) / 0.5


def dino_cfg(tmp_path, name, epochs, **kw):
    return TrainConfig(objective="dino", model="vit_pico_patch2_8", data="digits", runs_dir=str(tmp_path), name=name,
                       epochs=epochs, batch_size=128, progress=False, threads=1, weight_decay=0.04,
                       weight_decay_end=0.4, model_overrides=dict(TINY), **kw)


def test_dino_trains_on_the_runtime_freezes_the_last_layer_and_resumes_exactly(tmp_path):
    logged = []
    first = train(dino_cfg(tmp_path, "first", 1), log=logged.append)
    ckpt = load_checkpoint(first.run_dir / "last.safetensors")
    torch.manual_seed(0)  # the run's seed: the same initial weights
    init = vitkit.create_model("dino_vit_pico_patch2_8", **TINY)
    assert torch.equal(ckpt.state["student.head.last_layer.weight_v"], init.student.head.last_layer.weight_v)
    assert not torch.equal(ckpt.state["student.head.mlp.0.weight"], init.student.head.mlp[0].weight)
    assert ckpt.state["center"].abs().sum() > 0
    row = first.metrics[-1]
    assert 0 < row["teacher_entropy"] <= math.log(64) + 1e-6 and row["center_norm"] > 0 and 0 <= row["val_knn_acc"] <= 1
    assert any("linear probe" in line for line in logged)
    assert (first.run_dir / "linear_probe.json").exists()

    def stop(row):  # a kill after epoch 1 of 2
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(dino_cfg(tmp_path, "one", 2), on_epoch_end=stop, log=lambda *_: None)
    train(dino_cfg(tmp_path, "one", 2), resume=True, log=lambda *_: None)
    whole = train(dino_cfg(tmp_path, "two", 2), log=lambda *_: None)
    a = load_checkpoint(tmp_path / "one/last.safetensors")
    b = load_checkpoint(whole.run_dir / "last.safetensors")
    assert max((a.state[k] - b.state[k]).abs().max().item() for k in a.state) == 0.0
    assert not torch.equal(a.state["student.head.last_layer.weight_v"], init.student.head.last_layer.weight_v)


def test_a_dino_run_fine_tunes_from_its_teacher(tmp_path):
    run = train(dino_cfg(tmp_path, "d", 1), log=lambda *_: None)
    vit = vitkit.load_pretrained(run.run_dir / "best.safetensors", "vit_pico_patch2_8")
    state = load_checkpoint(run.run_dir / "best.safetensors").state
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, state["teacher.backbone.blocks.1.mlp.fc2.weight"])
    lines = []
    train(TrainConfig(init=str(run.run_dir / "best.safetensors"), data="digits", runs_dir=str(tmp_path), name="ft",
                      epochs=1, batch_size=128, progress=False, threads=1), log=lines.append)
    assert any("new head for 10 classes (the checkpoint has none)" in line for line in lines), lines


def test_every_command_reads_a_pretraining_run_as_its_backbone(tmp_path):
    """predict, export, eval and explain load models through infer.load_model: a DINO run gives its teacher's
    backbone, a plain ViT whose [CLS] attention `vitkit explain` draws."""
    from vitkit.infer import load_model
    from vitkit.models import VisionTransformer
    run = train(dino_cfg(tmp_path, "d", 1), log=lambda *_: None)
    loaded = load_model(str(run.run_dir / "best.safetensors"))
    assert type(loaded.model) is VisionTransformer and loaded.model.num_classes == 0
    assert "backbone of dino_vit_pico_patch2_8" in loaded.origin
    state = load_checkpoint(run.run_dir / "best.safetensors").state
    assert torch.equal(loaded.model.blocks[0].attn.qkv.weight, state["teacher.backbone.blocks.0.attn.qkv.weight"])
