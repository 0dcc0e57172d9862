"""The torchvision reader (vitkit.weights.torchvision).

torchvision cannot be installed here, so this file re-writes its ViT, Swin and ConvNeXt from torch.nn
primitives (`TVViT`, `TVSwin`, `TVConvNeXt` below), module for module as torchvision/models/*.py builds them, so
that `state_dict()` gives torchvision's exact key names and shapes, and `forward` is torchvision's computation
(nn.MultiheadAttention for ViT; for Swin a port of torchvision's `shifted_window_attention`, with its padding and
its -100 mask). What is verified how:

- the re-writes against torchvision itself: at full size (on the meta device) their parameter counts equal the
  `num_params` torchvision publishes with its weights (vit_b_16 86,567,656, vit_b_32 88,224,232, vit_l_16
  304,326,632, swin_t 28,288,354, convnext_tiny 28,589,128), and a few hand-checked key names and shapes;
- the key mapping at full size: every converted state dict fits the named vitkit model strictly (meta device);
- the numerics: logits of vitkit with the converted weights against the re-write's forward, ≤ 1e-4, for ViT-B
  (width 768, 2 blocks, 32×32), ViT with a representation layer and the pre-0.13 MLP key names, swin_t at
  full size on 224×224, and convnext_tiny at full size on 64×64;
- ResNet: torchvision's keys are written out here from torchvision's resnet.py and compared with timm's
  resnet50 (same keys and shapes, so timm's resnet50 is torchvision's); then a timm resnet50 state dict saved
  without BatchNorm counters (as old torchvision files are) loads and matches timm's logits.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.weights import CheckpointError, check_state_dict
from vitkit.weights import torchvision as tv

from parity import BN_STATS_NOISE, TOL, meta_model, n_params, perturb, redraw_uniform


# ---- torchvision's modules, re-written -----------------------------------------------------------------------
class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def tv_mlp(d: int, hidden: int) -> nn.Sequential:
    """torchvision.ops.MLP(d, [hidden, d], activation_layer=nn.GELU): Linear, GELU, Dropout, Linear, Dropout."""
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, d), nn.Dropout(0.0))


class TVEncoderBlock(nn.Module):
    def __init__(self, heads: int, d: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = tv_mlp(d, mlp)

    def forward(self, inp):
        x = self.ln_1(inp)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inp
        return x + self.mlp(self.ln_2(x))


class TVEncoder(nn.Module):
    def __init__(self, seq: int, layers: int, heads: int, d: int, mlp: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, d).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", TVEncoderBlock(heads, d, mlp))
                                                for i in range(layers)))
        self.ln = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TVViT(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                 mlp_dim: int, num_classes: int = 1000, representation_size: int | None = None):
        super().__init__()
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = TVEncoder((image_size // patch_size) ** 2 + 1, num_layers, num_heads, hidden_dim, mlp_dim)
        heads = OrderedDict()
        if representation_size is None:
            heads["head"] = nn.Linear(hidden_dim, num_classes)
        else:
            heads["pre_logits"] = nn.Linear(hidden_dim, representation_size)
            heads["act"] = nn.Tanh()
            heads["head"] = nn.Linear(representation_size, num_classes)
        self.heads = nn.Sequential(heads)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


TV_VITS = {  # torchvision's builders: (patch, layers, heads, hidden, mlp), published num_params
    "vit_b_16": ((16, 12, 12, 768, 3072), 86_567_656),
    "vit_b_32": ((32, 12, 12, 768, 3072), 88_224_232),
    "vit_l_16": ((16, 24, 16, 1024, 4096), 304_326_632),
}


def tv_vit(name: str, **kw) -> TVViT:
    (p, layers, heads, d, mlp), _ = TV_VITS[name]
    return TVViT(kw.pop("image_size", 224), p, kw.pop("num_layers", layers), heads, d, mlp, **kw)


def shifted_window_attention(x, qkv_w, proj_w, bias, window, heads, shift, qkv_b, proj_b):
    """torchvision.models.swin_transformer.shifted_window_attention (V1, no dropout), re-typed."""
    B, H, W, C = x.shape
    pad_r, pad_b = (window[1] - W % window[1]) % window[1], (window[0] - H % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pH, pW, _ = x.shape
    shift = list(shift)
    if window[0] >= pH:
        shift[0] = 0
    if window[1] >= pW:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nW = (pH // window[0]) * (pW // window[1])
    x = x.view(B, pH // window[0], window[0], pW // window[1], window[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * nW, window[0] * window[1], C)
    qkv = F.linear(x, qkv_w, qkv_b).reshape(x.size(0), x.size(1), 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (C // heads) ** -0.5).matmul(k.transpose(-2, -1)) + bias
    if sum(shift) > 0:
        mask = x.new_zeros((pH, pW))
        hs = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
        ws = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
        count = 0
        for h in hs:
            for w in ws:
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        mask = mask.view(pH // window[0], window[0], pW // window[1], window[1]).permute(0, 2, 1, 3)
        mask = mask.reshape(nW, window[0] * window[1])
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        attn = attn.view(x.size(0) // nW, nW, heads, x.size(1), x.size(1)) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, x.size(1), x.size(1))
    x = F.softmax(attn, dim=-1).matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_w, proj_b)
    x = x.view(B, pH // window[0], pW // window[1], window[0], window[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pH, pW, C)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


class TVShiftedWindowAttention(nn.Module):
    def __init__(self, dim, window, shift, heads):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), heads).normal_(std=0.02))
        coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij"))
        coords = torch.flatten(coords, 1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window[0] - 1
        rel[:, :, 1] += window[1] - 1
        rel[:, :, 0] *= 2 * window[1] - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten())  # persistent, as torchvision's

    def forward(self, x):
        N = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index].view(N, N, -1)
        bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, bias, self.window, self.heads,
                                        self.shift, self.qkv.bias, self.proj.bias)


class TVSwinBlock(nn.Module):
    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = TVShiftedWindowAttention(dim, window, shift, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = tv_mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TVPatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)

    def forward(self, x):
        H, W = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class TVSwin(nn.Module):
    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, num_classes=1000):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, embed_dim, 4, stride=4), Permute([0, 2, 3, 1]),
                                nn.LayerNorm(embed_dim, eps=1e-5))]
        for s, (depth, h) in enumerate(zip(depths, heads)):
            dim = embed_dim * 2 ** s
            layers.append(nn.Sequential(*[TVSwinBlock(dim, h, [window, window],
                                                      [0, 0] if j % 2 == 0 else [window // 2, window // 2])
                                          for j in range(depth)]))
            if s < len(depths) - 1:
                layers.append(TVPatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1), eps=1e-5)
        self.head = nn.Linear(embed_dim * 2 ** (len(depths) - 1), num_classes)

    def forward(self, x):
        x = self.norm(self.features(x)).permute(0, 3, 1, 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TVLayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class TVCNBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * 1e-6)

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class TVConvNeXt(nn.Module):
    """block_setting as torchvision's: (input_channels, out_channels or None, num_layers) per stage."""

    def __init__(self, setting=((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)), num_classes=1000):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, setting[0][0], 4, stride=4), TVLayerNorm2d(setting[0][0], eps=1e-6))]
        for cin, cout, n in setting:
            layers.append(nn.Sequential(*[TVCNBlock(cin) for _ in range(n)]))
            if cout is not None:
                layers.append(nn.Sequential(TVLayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, stride=2)))
        self.features = nn.Sequential(*layers)
        last = setting[-1][0]
        self.classifier = nn.Sequential(TVLayerNorm2d(last, eps=1e-6), nn.Flatten(1), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1))


def tv_resnet50_layout() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet50 state-dict keys and shapes, written out from torchvision/models/resnet.py."""
    out: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        out.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                    f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for j in range(blocks):
            p = f"layer{i}.{j}"
            cin = inplanes if j == 0 else planes * 4
            out[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    out.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return out


# ---- helpers ------------------------------------------------------------------------------------------------
def _meta(make):
    with torch.device("meta"):
        return make()


def _build(converted, **extra) -> nn.Module:
    model = vitkit.create_model(converted.model_name, **{**converted.overrides, **extra}).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def _diff(ours, ref, x) -> float:
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.shape == b.shape
    assert (b[0] - b[1]).abs().max() > 1e-3  # the logits depend on the input: a real comparison
    return (a - b).abs().max().item()


def _save(model_or_state, path):
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    torch.save(state, path)
    return path


# ---- 1. the re-writes are torchvision's, and the keys map at full size ---------------------------------------------
FULL = [("vit_b_16", lambda: tv_vit("vit_b_16"), 86_567_656, "vit_base_patch16_224"),
        ("vit_b_32", lambda: tv_vit("vit_b_32"), 88_224_232, "vit_base_patch32_224"),
        ("vit_l_16", lambda: tv_vit("vit_l_16"), 304_326_632, "vit_large_patch16_224"),
        ("swin_t", TVSwin, 28_288_354, "swin_tiny_patch4_window7_224"),
        ("convnext_tiny", TVConvNeXt, 28_589_128, "convnext_tiny")]


@pytest.mark.parametrize("tv_name,make,num_params,vitkit_name", FULL, ids=[f[0] for f in FULL])
def test_full_size_layouts_convert_to_the_named_vitkit_model(tv_name, make, num_params, vitkit_name):
    ref = _meta(make)
    assert n_params(ref) == num_params  # torchvision's published count: the re-write has its parameters
    for name in (tv_name, vitkit_name, None):
        got = tv.convert_state_dict(ref.state_dict(), name)
        assert (got.model_name, got.overrides, got.source) == (vitkit_name, {}, "torchvision")
    ours = meta_model(vitkit_name)
    check_state_dict(ours, got.state, source=tv_name)  # every key, every shape
    assert n_params(ours) == num_params


def test_hand_checked_torchvision_keys():
    vit, swin, cnx = _meta(lambda: tv_vit("vit_b_16")), _meta(TVSwin), _meta(TVConvNeXt)
    s = vit.state_dict()
    assert s["encoder.layers.encoder_layer_11.self_attention.in_proj_weight"].shape == (2304, 768)
    assert s["encoder.layers.encoder_layer_0.mlp.3.weight"].shape == (768, 3072)
    assert s["encoder.pos_embedding"].shape == (1, 197, 768) and s["heads.head.weight"].shape == (1000, 768)
    s = swin.state_dict()
    assert s["features.5.5.attn.relative_position_bias_table"].shape == (169, 12)
    assert s["features.5.5.attn.relative_position_index"].shape == (2401,)
    assert s["features.6.reduction.weight"].shape == (768, 1536) and s["features.0.2.weight"].shape == (96,)
    s = cnx.state_dict()
    assert s["features.5.8.layer_scale"].shape == (384, 1, 1) and s["features.6.1.weight"].shape == (768, 384, 2, 2)
    assert s["classifier.0.weight"].shape == (768,) and s["classifier.2.weight"].shape == (1000, 768)


# ---- 2. numerics against the re-written forward ----------------------------------------------------------------
def test_vit_b_16_layout_matches_torchvisions_forward(tmp_path):
    """ViT-B width (768, 12 heads) with 2 blocks at 32×32: inferred as vit_base_patch16_224 + overrides."""
    ref = perturb(tv_vit("vit_b_16", image_size=32, num_layers=2, num_classes=10), scale=0.1).eval()
    path = _save(ref, tmp_path / "vit.pth")
    assert tv.detect(path)
    got = tv.read(path)
    assert (got.model_name, got.overrides) == ("vit_base_patch16_224", {"depth": 2, "img_size": 32, "num_classes": 10})
    assert _diff(_build(got), ref, torch.randn(2, 3, 32, 32)) <= TOL


def test_vit_with_representation_layer_and_old_mlp_names(tmp_path):
    """heads.pre_logits + tanh (representation_size), and the mlp.linear_1 / linear_2 keys of torchvision < 0.13."""
    ref = perturb(tv_vit("vit_b_32", image_size=64, num_layers=1, num_classes=5, representation_size=32),
                  scale=0.1).eval()
    state = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
             for k, v in ref.state_dict().items()}
    assert "encoder.layers.encoder_layer_0.mlp.linear_2.bias" in state
    got = tv.read(_save(state, tmp_path / "old.pth"))
    assert (got.model_name, got.overrides) == ("vit_base_patch32_224", {"depth": 1, "img_size": 64, "num_classes": 5,
                                                                       "head_hidden_size": 32})
    assert _diff(_build(got), ref, torch.randn(2, 3, 64, 64)) <= TOL


def test_swin_t_full_size_matches_torchvisions_forward(tmp_path):
    ref = perturb(TVSwin(), scale=0.1).eval()
    path = _save(ref, tmp_path / "swin_t.pth")
    assert tv.detect(path)
    got = tv.read(path, "swin_t")
    assert "features.1.0.attn.relative_position_index" not in got.state
    assert _diff(_build(got), ref, torch.randn(2, 3, 224, 224)) <= TOL


def test_convnext_tiny_full_size_matches_torchvisions_forward(tmp_path):
    """layer_scale (C, 1, 1) → gamma (C,); its 1e-6 start is redrawn so that every block counts."""
    ref = perturb(TVConvNeXt(), scale=0.1, params={"*layer_scale": redraw_uniform(0.2, 0.6)}).eval()
    path = _save(ref, tmp_path / "convnext_tiny.pth")
    assert tv.detect(path)
    got = tv.read(path, "convnext_tiny")
    assert _diff(_build(got), ref, torch.randn(2, 3, 64, 64)) <= TOL


def test_a_reduced_convnext_is_inferred_with_overrides(tmp_path):
    ref = perturb(TVConvNeXt(((16, 32, 1), (32, 48, 2), (48, None, 1)), num_classes=7), scale=0.1,
                  params={"*layer_scale": redraw_uniform(0.2, 0.6)}).eval()
    got = tv.read(_save(ref, tmp_path / "small.pth"))
    assert (got.model_name, got.overrides) == ("convnext_tiny", {"depths": (1, 2, 1), "dims": (16, 32, 48),
                                                                 "num_classes": 7})
    assert _diff(_build(got), ref, torch.randn(2, 3, 64, 64)) <= TOL


@pytest.mark.timm
def test_resnet50_keys_are_timms_and_load(timm, tmp_path):
    theirs = timm.create_model("resnet50", pretrained=False)
    layout = tv_resnet50_layout()
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == layout  # timm's resnet50 is torchvision's
    theirs = perturb(theirs, scale=0.1, buffers=BN_STATS_NOISE).eval()
    old_style = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = _save(old_style, tmp_path / "resnet50.pth")
    assert not tv.detect(path)  # the keys are timm's: left to the timm dialect unless named
    got = tv.read(path, "resnet50")
    assert (got.model_name, got.overrides) == ("resnet50", {})
    assert _diff(_build(got), theirs, torch.randn(2, 3, 64, 64)) <= TOL


# ---- 3. wrong names and other files -------------------------------------------------------------------------------
def test_a_wrong_architecture_name_is_refused_with_the_mismatch():
    vit = _meta(lambda: tv_vit("vit_b_16")).state_dict()
    with pytest.raises(CheckpointError, match=r"vit_b16\.pth does not fit 'vit_large_patch16_224'.*embed_dim 768"):
        tv.convert_state_dict(vit, "vit_l_16", source="vit_b16.pth")
    with pytest.raises(CheckpointError, match=r"is a torchvision vit state dict .* but 'swin_t' is a swin model"):
        tv.convert_state_dict(vit, "swin_t")
    swin = _meta(TVSwin).state_dict()
    with pytest.raises(CheckpointError, match="torchvision swin state dict .* but 'convnext_tiny' is a convnext"):
        tv.convert_state_dict(swin, "convnext_tiny")
    with pytest.raises(CheckpointError, match=r"does not fit 'swin_small_patch4_window7_224'.*depths \(2, 2, 6, 2\)"):
        tv.convert_state_dict(swin, "swin_s")
    with pytest.raises(CheckpointError, match="unknown model 'vit_b_61'"):
        tv.convert_state_dict(vit, "vit_b_61")


def test_other_files_are_not_claimed_and_get_clear_errors(tmp_path):
    vit = tv_vit("vit_b_16", image_size=32, num_layers=1).state_dict()
    assert not tv.detect(_save({"weight": torch.zeros(2)}, tmp_path / "other.pth"))
    assert not tv.detect(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert not tv.detect(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth is not a torchvision ViT, Swin, ConvNeXt or ResNet"):
        tv.read(tmp_path / "other.pth")
    cut = {k: v for k, v in vit.items() if k != "encoder.layers.encoder_layer_0.self_attention.in_proj_bias"}
    with pytest.raises(CheckpointError, match=r"cut\.pth has no 'encoder\.layers\.encoder_layer_0\.self_attention"
                                              r"\.in_proj_bias'"):
        tv.convert_state_dict(cut, source="cut.pth")
    extra = dict(vit, **{"encoder.layers.encoder_layer_0.mystery": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"extra\.pth has 1 key\(s\) vitkit does not know where to put: "
                                              r"encoder\.layers\.encoder_layer_0\.mystery"):
        tv.convert_state_dict(extra, source="extra.pth")


def test_vit_heads_come_from_the_name_when_the_width_is_not_standard():
    """torchvision does not store the number of heads: a non-standard width needs a name that has one."""
    odd = TVViT(32, 16, 1, 4, 48, 96, num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match="not a standard ViT size; pass the vitkit model name"):
        tv.convert_state_dict(odd)
    with pytest.raises(CheckpointError, match="does not fit 'vit_tiny_patch16_224'.*embed_dim 48"):
        tv.convert_state_dict(odd, "vit_tiny_patch16_224")


def test_swin_v2_and_conv_stem_vits_are_refused():
    swin = _meta(TVSwin).state_dict()
    v2 = dict(swin, **{"features.1.0.attn.cpb_mlp.0.weight": torch.zeros(512, 2, device="meta")})
    with pytest.raises(CheckpointError, match="Swin V2"):
        tv.convert_state_dict(v2)
    vit = _meta(lambda: tv_vit("vit_b_16")).state_dict()
    stem = {("conv_proj.conv_last.weight" if k == "conv_proj.weight" else k): v for k, v in vit.items()}
    stem["conv_proj.weight"] = vit["conv_proj.weight"]
    with pytest.raises(CheckpointError, match="convolutional stem"):
        tv.convert_state_dict(stem)
