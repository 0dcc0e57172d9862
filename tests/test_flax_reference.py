"""The JAX release's numerics, against Flax itself: a ViT written in flax.linen with the module names and
layers of google-research/vision_transformer (models_vit.py: Encoder1DBlock, MlpBlock with `nn.gelu`,
AddPositionEmbs, LayerNorm at Flax's default epsilon 1e-6), random weights saved as an .npz in that key
layout, read by vitkit, and the logits compared.

Flax's `nn.gelu` is the tanh approximation by default, so the release's models computed with it. timm's npz
loader (and vitkit before it read `act='gelu_tanh'` from the file's dialect) uses exact GELU, which puts the
logits about 5e-4 away: the last assertion shows that gap, so this test cannot pass on exact GELU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitkit

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
jnp = jax.numpy

IMG, PATCH, WIDTH, DEPTH, HEADS, MLP, CLASSES = 32, 8, 48, 2, 3, 96, 5


class MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.mlp_dim)(x)
        y = nn.gelu(y)  # the release's call: Flax's default, approximate=True
        return nn.Dense(x.shape[-1])(y)


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, inputs):
        x = nn.LayerNorm()(inputs)
        x = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(x, x)
        x = x + inputs
        y = nn.LayerNorm()(x)
        return x + MlpBlock(self.mlp_dim)(y)


class AddPositionEmbs(nn.Module):
    @nn.compact
    def __call__(self, x):
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], x.shape[2]))
        return x + pos


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = AddPositionEmbs(name="posembed_input")(x)
        for i in range(DEPTH):
            x = Encoder1DBlock(MLP, HEADS, name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


class VisionTransformer(nn.Module):
    @nn.compact
    def __call__(self, images):  # (B, H, W, C), as the release takes them
        x = nn.Conv(WIDTH, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID", name="embedding")(images)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
        x = Encoder(name="Transformer")(x)
        return nn.Dense(CLASSES, name="head")(x[:, 0])


def _flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


def test_the_release_numerics_are_flax_s(tmp_path):
    flax_vit = VisionTransformer()
    images = np.random.default_rng(0).normal(size=(2, IMG, IMG, 3)).astype(np.float32)
    params = flax_vit.init(jax.random.PRNGKey(0), images)["params"]
    rng = np.random.default_rng(1)  # perturb every array, zero- and one-initialised ones too
    arrays = {k: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32) for k, v in _flat(params)}
    path = tmp_path / "ViT-flax.npz"
    np.savez(path, **arrays)
    theirs = np.asarray(flax_vit.apply({"params": jax.tree_util.tree_map(
        jnp.asarray, _unflat(arrays))}, images))

    model = vitkit.load_pretrained(path)
    assert model.cfg.act == "gelu_tanh"
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours = model(x).numpy()
    assert np.abs(theirs).max() > 0.5 and np.abs(theirs[0] - theirs[1]).max() > 1e-2  # a real comparison
    print(f"tanh GELU: max |Δlogit| {np.abs(ours - theirs).max():.1e} (logits up to {np.abs(theirs).max():.1f})")
    assert np.abs(ours - theirs).max() <= 1e-5, np.abs(ours - theirs).max()

    exact = vitkit.load_pretrained(path, act="gelu")  # what timm's npz loader computes
    with torch.no_grad():
        gap = np.abs(exact(x).numpy() - theirs).max()
    print(f"exact GELU: max |Δlogit| {gap:.1e}")
    assert gap > 1e-4, gap


def _unflat(arrays: dict) -> dict:
    tree: dict = {}
    for key, value in arrays.items():
        *path, leaf = key.split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
