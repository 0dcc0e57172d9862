"""Loading weights: safe by default, strict, and clear about what is wrong."""
import dataclasses

import pytest
import torch

import vitkit
from vitkit.weights import (CheckpointError, load_checkpoint, load_weights_into, read_state_dict, save_checkpoint,
                            save_safetensors)

SMALL = {"depth": 2}


class ArbitraryCode:
    """An object whose unpickling runs code: it leaves a marker file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_safetensors_round_trip_gives_the_same_logits(tmp_path):
    a = vitkit.create_model("vit_tiny_patch16_224", **SMALL).eval()
    save_safetensors(tmp_path / "w.safetensors", a.state_dict())
    b = vitkit.create_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.safetensors"), **SMALL).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_plain_pytorch_state_dicts_load_through_weights_only(tmp_path):
    a = vitkit.create_model("vit_pico_patch2_8")
    torch.save({"state_dict": a.state_dict(), "epoch": 3}, tmp_path / "w.pth")  # a common training-script layout
    state = read_state_dict(tmp_path / "w.pth")
    assert state.keys() == a.state_dict().keys()
    torch.save({f"module.{k}": v for k, v in a.state_dict().items()}, tmp_path / "ddp.pth")  # saved from DDP
    assert read_state_dict(tmp_path / "ddp.pth").keys() == a.state_dict().keys()


def test_a_pickle_that_runs_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "code-ran"
    weights = vitkit.create_model("vit_pico_patch2_8").state_dict()
    torch.save({"state_dict": weights, "extra": ArbitraryCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="trust_pickle=True") as err:
        read_state_dict(tmp_path / "evil.pth")
    assert "evil.pth" in str(err.value) and "io.open" in str(err.value)  # it names the code it would run
    assert not marker.exists()  # nothing was executed
    state = read_state_dict(tmp_path / "evil.pth", trust_pickle=True)
    assert marker.exists() and state.keys() == weights.keys()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_get_a_clear_error_naming_them(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    weights = vitkit.create_model("vit_pico_patch2_8").state_dict()
    if suffix == ".safetensors":
        save_safetensors(path, weights)
    else:
        torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_state_dict(tmp_path)


def test_a_checkpoint_for_another_architecture_is_reported_in_full(tmp_path):
    save_safetensors(tmp_path / "tiny.safetensors", vitkit.create_model("vit_tiny_patch16_224", **SMALL).state_dict())
    small = vitkit.create_model("vit_small_patch16_224", **SMALL)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights_into(small, tmp_path / "tiny.safetensors")
    msg = str(err.value)
    assert "vit_small_patch16_224" in msg and "wrong shape" in msg and "another size" in msg
    assert "pos_embed (checkpoint (1, 197, 192), model (1, 197, 384))" in msg
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # nothing loaded half-way

    other_classes = vitkit.create_model("vit_tiny_patch16_224", num_classes=10, **SMALL)
    with pytest.raises(CheckpointError, match="only the classifier differs"):
        load_weights_into(other_classes, tmp_path / "tiny.safetensors")
    other_size = vitkit.create_model("vit_tiny_patch16_224", img_size=384, **SMALL)
    with pytest.raises(CheckpointError, match="another image size"):
        load_weights_into(other_size, tmp_path / "tiny.safetensors")

    deeper = vitkit.create_model("vit_tiny_patch16_224", depth=3)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): blocks\.2\."):
        load_weights_into(deeper, tmp_path / "tiny.safetensors")


def test_vitkit_checkpoint_carries_its_model_and_data(tmp_path):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3)
    data = {"classes": ["cat", "dog", "eel"], "img_size": [8, 8], "in_chans": 1, "mean": [0.5], "std": [0.5]}
    save_checkpoint(tmp_path / "c.safetensors", model=model, model_name="vit_pico_patch2_8",
                    overrides={"depth": 1, "num_classes": 3, "img_size": (8, 8)}, data=data)
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.classes == ["cat", "dog", "eel"] and ckpt.overrides["img_size"] == (8, 8)
    rebuilt = ckpt.build_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    # the model part also loads as plain weights
    load_weights_into(vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=3), tmp_path / "c.safetensors")


def test_plain_weights_are_not_mistaken_for_a_vitkit_checkpoint(tmp_path):
    save_safetensors(tmp_path / "plain.safetensors", vitkit.create_model("vit_pico_patch2_8").state_dict())
    with pytest.raises(CheckpointError, match="not a vitkit checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


@pytest.mark.timm
def test_a_timm_checkpoint_file_loads_by_name_and_matches_timm(tmp_path, timm):
    reference = timm.create_model("vit_small_patch16_224", depth=2).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    ours = vitkit.create_model("vit_small_patch16_224", depth=2, checkpoint=str(tmp_path / "timm.pth")).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-4


# ---- damaged pickles are told from pickles that need code ---------------------------------------------------------
def _pico_state():
    return vitkit.create_model("vit_pico_patch2_8", depth=1).state_dict()


@pytest.mark.parametrize("damage", ["random bytes", "zip cut short", "legacy cut short", "flipped global name"])
def test_a_damaged_pickle_is_called_damaged_and_trusting_it_is_never_suggested(tmp_path, damage):
    path = tmp_path / "broken.pth"
    if damage == "random bytes":
        path.write_bytes(bytes(torch.randint(0, 256, (2048,), dtype=torch.uint8).tolist()))
    elif damage == "flipped global name":  # a byte flipped inside 'torch._utils._rebuild_tensor_v2'
        torch.save(_pico_state(), path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        path.write_bytes(data.replace(b"_rebuild_tensor_v2", b"_rebuild_tensoq_v2"))
    else:
        torch.save(_pico_state(), path, _use_new_zipfile_serialization=damage == "zip cut short")
        path.write_bytes(path.read_bytes()[:700])
    for trust in (False, True):  # trusting a damaged file gives the same error, not a raw UnpicklingError
        with pytest.raises(CheckpointError, match="damaged") as err:
            read_state_dict(path, trust_pickle=trust)
        assert str(path) in str(err.value)
        assert "trust_pickle" not in str(err.value) and "weights_only" not in str(err.value)


def test_a_pickled_object_from_a_package_that_is_not_installed_says_so(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x02cnosuch_package.models\nNet\nq\x00)\x81q\x01.")  # pickle of an instance of Net
    with pytest.raises(CheckpointError, match="not installed here") as err:
        read_state_dict(path)
    assert "nosuch_package" in str(err.value) and "trust_pickle" not in str(err.value)


def test_every_vitkit_error_is_a_value_error():
    from vitkit.data import DataError
    from vitkit.errors import VitkitError
    assert issubclass(CheckpointError, VitkitError) and issubclass(DataError, VitkitError)
    assert issubclass(VitkitError, ValueError)  # `except ValueError` keeps catching them


# ---- what a checkpoint holds is checked before it is used -----------------------------------------------------------
def test_integer_weights_are_refused_not_cast(tmp_path):
    model = vitkit.create_model("vit_pico_patch2_8", depth=1)
    state = model.state_dict()
    state["head.weight"] = (state["head.weight"] * 100).to(torch.int32)  # casting would make a constant head
    save_safetensors(tmp_path / "int.safetensors", state)
    with pytest.raises(CheckpointError, match=r"head.weight \(checkpoint int32, model float32\)") as err:
        load_weights_into(vitkit.create_model("vit_pico_patch2_8", depth=1), tmp_path / "int.safetensors")
    assert "same score" in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    state = _pico_state()
    state["blocks.0.mlp.fc1.weight"][3, 5] = value
    save_safetensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values: blocks.0.mlp.fc1.weight \(1 (NaN|infinite)\)"):
        vitkit.load_pretrained(tmp_path / "bad.safetensors", "vit_pico_patch2_8", depth=1)


def _saved(tmp_path, name="c.safetensors", overrides=None, data=None, model=None):
    model = model or vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=10)
    path = tmp_path / name
    save_checkpoint(path, model=model, model_name="vit_pico_patch2_8",
                    overrides=overrides or {"depth": 1, "num_classes": 10}, data=data or {})
    return path


def test_class_names_must_match_the_head(tmp_path):
    path = _saved(tmp_path, data={"classes": ["cat", "dog"]})
    with pytest.raises(CheckpointError, match="names 2 classes but its model has a head with 10 outputs") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="names 2 classes"):
        vitkit.load_pretrained(path)


@pytest.mark.parametrize("data,match", [
    ({"mean": [0.5, 0.5, 0.5]}, "3 mean value"),
    ({"crop_pct": 2.0}, r"crop_pct is 2.0, not a fraction in \(0, 1\]"),
    ({"img_size": [16, 16]}, "image size"),
    ({"in_chans": 3}, "3-channel"),
    ({"classes": "abc"}, "not a list of class names"),
])
def test_the_data_record_must_fit_the_model(tmp_path, data, match):
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(_saved(tmp_path, data=data))


def _header(tmp_path, meta: dict, name="h.safetensors"):
    """A vitkit checkpoint with this header (no checksum: a file from before vitkit wrote them, or a hand edit)."""
    from safetensors.torch import save_file
    path = tmp_path / name
    state = vitkit.create_model("vit_pico_patch2_8", depth=1).state_dict()
    save_file({f"model.{k}": v for k, v in state.items()}, str(path), metadata={"format": "vitkit", **meta})
    return path


@pytest.mark.parametrize("meta,match", [
    ({}, "without a 'model' entry"),
    ({"model": "{not json"}, "'model' entry is not valid JSON"),
    ({"model": '["vit_pico_patch2_8"]'}, "'model' entry is a list, not a JSON object"),
    ({"model": '{"overrides": {}}'}, "has no 'name'"),
    ({"model": '{"name": ["x"]}'}, "model name is \\['x'\\], not a string"),
    ({"model": '{"name": "vit_pico_patch2_8", "overrides": {"depth": "1"}}'}, "depth='1' \\(expected int\\)"),
    ({"model": '{"name": "vit_pico_patch2_8", "overrides": {"colour": 1}}'}, "has no option\\(s\\) colour"),
    ({"model": '{"name": "resnet18", "overrides": {}}'}, "does not fit resnet18"),
    ({"model": '{"name": "vit_pico_patch2_8", "overrides": {"depth": 1}}', "data": "[1]"}, "'data' entry is a list"),
])
def test_a_damaged_header_gets_an_error_naming_the_file_and_the_entry(tmp_path, meta, match):
    path = _header(tmp_path, meta)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.fixture
def no_real_giant(monkeypatch):
    """Fail a test if a ViT wider than 10,000 is built anywhere but on the meta device (before allocating it)."""
    from vitkit.models.vit import VisionTransformer
    init, giants = VisionTransformer.__init__, []

    def spy(self, cfg):
        device = torch.get_default_device().type
        if cfg.embed_dim > 10_000:
            giants.append(device)
            if device != "meta":
                raise AssertionError(f"a {cfg.embed_dim}-wide ViT was being allocated on {device}")
        init(self, cfg)
    monkeypatch.setattr(VisionTransformer, "__init__", spy)
    return giants


def test_header_options_are_checked_on_the_meta_device_before_anything_is_allocated(tmp_path, no_real_giant):
    # the file: a small model's tensors under a header that asks for ~160 GB of weights
    path = _saved(tmp_path, overrides={"embed_dim": 200_000, "depth": 64, "num_classes": 10})
    with pytest.raises(CheckpointError, match="more blocks than") as err:
        load_checkpoint(path).build_model()
    assert str(path) in str(err.value)
    path = _saved(tmp_path, overrides={"embed_dim": 200_000, "depth": 1, "num_classes": 10})
    with pytest.raises(CheckpointError, match=r"pos_embed \(checkpoint \(1, 17, 64\), model \(1, 17, 200000\)\)"):
        vitkit.load_pretrained(path)
    assert set(no_real_giant) == {"meta"}  # it was built, but only as shapes


def test_a_plain_state_dict_under_a_far_larger_name_is_refused_before_it_is_built(tmp_path, no_real_giant):
    save_safetensors(tmp_path / "pico.safetensors", _pico_state())
    with pytest.raises(CheckpointError, match="does not fit"):
        vitkit.load_pretrained(tmp_path / "pico.safetensors", "vit_pico_patch2_8", embed_dim=16_384, depth=1)
    assert set(no_real_giant) == {"meta"}


# ---- integrity: vitkit checkpoints carry a checksum --------------------------------------------------------------
def test_a_byte_changed_in_a_saved_checkpoint_is_caught(tmp_path):
    path = _saved(tmp_path)
    load_checkpoint(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum in its header") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="checksum"):
        vitkit.load_pretrained(path)


def test_the_checksum_covers_the_header_and_older_checkpoints_without_one_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = _saved(tmp_path, data={"classes": [str(i) for i in range(10)]})
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    assert meta["checksum"].startswith("sha256:")
    edited = dict(meta, data=meta["data"].replace('"1"', '"one"'))
    save_file(load_file(str(path)), str(tmp_path / "edited.safetensors"), metadata=edited)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "edited.safetensors")
    old = {k: v for k, v in edited.items() if k != "checksum"}  # as vitkit wrote checkpoints before checksums
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=old)
    assert load_checkpoint(tmp_path / "old.safetensors").classes[1] == "one"


def test_a_vitkit_checkpoint_read_as_plain_weights_is_verified_too(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_weights_into(vitkit.create_model("vit_pico_patch2_8", depth=1, num_classes=10), path)


@dataclasses.dataclass(frozen=True)
class _TableConfig:
    img_size: int = 8       # the side of a table the model derives at build time
    num_classes: int = 2


class _TableModel(torch.nn.Module):
    """A model whose non-persistent buffer grows with img_size: no tensor in its file shows that size."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.head = cfg, torch.nn.Linear(4, cfg.num_classes)
        self.register_buffer("table", torch.zeros(cfg.img_size, cfg.img_size), persistent=False)


def test_options_that_would_derive_huge_tables_are_refused_before_building(tmp_path, monkeypatch):
    from vitkit import registry
    monkeypatch.setitem(registry._REGISTRY, "table_model", registry.ModelEntry(
        "table_model", "test", _TableConfig(), _TableModel))
    path = tmp_path / "table.safetensors"
    save_checkpoint(path, model=_TableModel(_TableConfig()), model_name="table_model",
                    overrides={"img_size": 40_000}, data={})  # 40,000² floats: 6 GB the 40-byte file never shows
    with pytest.raises(CheckpointError, match=r"would derive 6\.0 GiB of tables \(table\)") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
