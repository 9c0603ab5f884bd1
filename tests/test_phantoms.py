"""Tests for the synthetic chest X-ray generator (napari_gradcam.phantoms)."""

import pathlib

import time

import numpy as np
import pytest
from PIL import Image

from napari_gradcam import phantoms

from napari_gradcam.phantoms import (
    CLASSES,
    Phantom,
    make_batch,
    make_mosaic,
    make_xray,
    write_dataset,
)

SEEDS = range(12)


def _halves(mask):
    size = mask.shape[1]
    return bool(mask[:, : size // 2].any()), bool(mask[:, size // 2:].any())


def test_classes():
    assert CLASSES == ("normal", "pneumonia", "covid")


def test_module_does_not_import_heavy_deps():
    src = pathlib.Path(phantoms.__file__).read_text()
    assert "import torch" not in src and "import napari" not in src


@pytest.mark.parametrize("label", CLASSES)
@pytest.mark.parametrize("size", [16, 64, 101])
def test_shapes_and_dtypes(label, size):
    ph = make_xray(label, size=size, seed=3)
    assert isinstance(ph, Phantom)
    assert ph.label == label
    assert ph.image.shape == (size, size) and ph.image.dtype == np.uint8
    assert ph.mask.shape == (size, size) and ph.mask.dtype == bool
    if label != "normal":
        assert ph.mask.any()


def test_defaults():
    ph = make_xray()
    assert ph.label == "normal" and ph.image.shape == (256, 256)


@pytest.mark.parametrize("label", CLASSES)
def test_deterministic(label):
    a = make_xray(label, 64, seed=7)
    b = make_xray(label, 64, seed=np.int64(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = make_xray(label, 64, seed=8)
    assert not np.array_equal(a.image, c.image)
    if label != "normal":
        assert not np.array_equal(a.mask, c.mask)


def test_anatomy_depends_on_seed_only():
    """Lesion phantoms are the normal phantom of the same seed plus a lesion."""
    for s in range(5):
        n = make_xray("normal", 64, s).image
        for label in ("pneumonia", "covid"):
            assert (make_xray(label, 64, s).image == n).mean() > 0.75


def test_looks_like_a_chest_xray():
    for s in SEEDS:
        img = make_xray("normal", 64, s).image.astype(float)
        # dark background above the shoulders
        assert img[:4, :4].mean() < 60 and img[:4, -4:].mean() < 60
        # bright mediastinum between two dark lungs
        medi = img[16:32, 28:36].mean()
        left, right = img[20:36, 8:22].mean(), img[20:36, 42:56].mean()
        assert medi > left + 40 and medi > right + 40
        # bright abdomen below the diaphragm
        assert img[56:62, 12:52].mean() > max(left, right) + 40


def test_normal_mask_empty():
    for s in SEEDS:
        assert not make_xray("normal", 64, s).mask.any()


def test_pneumonia_in_one_lung():
    sides = set()
    for s in SEEDS:
        m = make_xray("pneumonia", 64, s).mask
        left, right = _halves(m)
        assert left != right, f"seed {s}: consolidation must lie in exactly one half"
        sides.add(left)
    assert sides == {True, False}  # both sides occur


def test_covid_bilateral():
    for s in SEEDS:
        m = make_xray("covid", 64, s).mask
        assert all(_halves(m)), f"seed {s}: ground glass must touch both halves"


@pytest.mark.parametrize("label", ["pneumonia", "covid"])
@pytest.mark.parametrize("size", [64, 128])
def test_mask_size(label, size):
    for s in SEEDS:
        frac = make_xray(label, size, s).mask.mean()
        assert 0.005 <= frac <= 0.30, (s, frac)


def test_lesions_are_brighter():
    deltas = {"pneumonia": [], "covid": []}
    for s in SEEDS:
        normal = make_xray("normal", 64, s).image.astype(float)
        for label in deltas:
            ph = make_xray(label, 64, s)
            img = ph.image.astype(float)
            # brighter than the same pixels without the lesion
            d = img[ph.mask].mean() - normal[ph.mask].mean()
            assert d > 10, (label, s, d)
            deltas[label].append(d)
    # consolidation is denser than ground glass
    assert np.mean(deltas["pneumonia"]) > np.mean(deltas["covid"]) + 15


def test_bad_arguments():
    with pytest.raises(ValueError, match="normal.*pneumonia.*covid"):
        make_xray("tuberculosis")
    with pytest.raises(ValueError, match="16"):
        make_xray("normal", size=15)
    with pytest.raises(ValueError, match="seed"):
        make_xray("normal", seed=-1)
    with pytest.raises(ValueError, match="valid labels"):
        make_batch(2, classes=("normal", "flu"))
    with pytest.raises(ValueError, match="16"):
        make_batch(2, size=8)
    with pytest.raises(ValueError, match="tile"):
        make_mosaic((64, 64), tile=4)


def test_make_batch():
    imgs, masks, labels = make_batch(4, size=32, seed=1)
    assert imgs.shape == (12, 32, 32) and imgs.dtype == np.uint8
    assert masks.shape == (12, 32, 32) and masks.dtype == bool
    assert labels.shape == (12,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.tile([0, 1, 2], 4))
    assert not masks[labels == 0].any()
    assert all(m.any() for m in masks[labels != 0])
    # all different patients
    assert len({im.tobytes() for im in imgs}) == 12
    # deterministic, seed-dependent
    imgs2, masks2, labels2 = make_batch(4, size=32, seed=1)
    np.testing.assert_array_equal(imgs, imgs2)
    np.testing.assert_array_equal(masks, masks2)
    assert not np.array_equal(imgs, make_batch(4, size=32, seed=2)[0])


def test_make_batch_class_subset():
    imgs, masks, labels = make_batch(3, size=32, classes=("covid", "normal"))
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 0, 1])
    assert masks[labels == 0].any(axis=(1, 2)).all()
    assert not masks[labels == 1].any()
    empty = make_batch(0, size=32)
    assert empty[0].shape == (0, 32, 32) and empty[2].shape == (0,)


def test_write_dataset(tmp_path):
    root = tmp_path / "data"
    mdir = tmp_path / "masks"
    out = write_dataset(str(root), 2, size=32, seed=5, mask_dir=mdir)
    assert out == root and isinstance(out, pathlib.Path)
    imgs, masks, labels = make_batch(2, size=32, seed=5)
    for ci, cname in enumerate(CLASSES):
        files = sorted(p.name for p in (root / cname).iterdir())
        assert files == [f"{cname}_0000.png", f"{cname}_0001.png"]
        for i, name in enumerate(files):
            with Image.open(root / cname / name) as im:
                assert im.mode == "L"
                arr = np.asarray(im)
            np.testing.assert_array_equal(arr, imgs[i * len(CLASSES) + ci])
            with Image.open(mdir / cname / name) as mm:
                m = np.asarray(mm)
            assert m.dtype == np.uint8 and m.shape == (32, 32)
            assert set(np.unique(m)) <= {0, 255}
            np.testing.assert_array_equal(m == 255, masks[i * len(CLASSES) + ci])
            assert (m.any()) == (cname != "normal")


def test_write_dataset_without_masks(tmp_path):
    write_dataset(tmp_path / "d", 1, size=16, classes=("pneumonia",))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "d/pneumonia/pneumonia_0000.png"
    ]


def test_make_mosaic():
    img, cmap = make_mosaic((150, 200), tile=64, seed=2)
    assert img.shape == (150, 200) and img.dtype == np.uint8
    assert cmap.shape == (150, 200) and cmap.dtype == np.int8
    # 3 x 4 grid, row-major, classes cycling
    assert cmap[0, 0] == 0 and cmap[0, 64] == 1 and cmap[0, 128] == 2 and cmap[0, 199] == 0
    assert cmap[64, 0] == 1 and cmap[149, 199] == (2 * 4 + 3) % 3
    assert set(np.unique(cmap)) == {0, 1, 2}
    # each tile is a whole X-ray with dark corners
    assert img[:3, :3].mean() < 60 and img[64:67, 64:67].mean() < 60
    img2, cmap2 = make_mosaic((150, 200), tile=64, seed=2)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(cmap, cmap2)
    _, cm = make_mosaic((40, 40), tile=32, classes=("covid",))
    assert (cm == 0).all()


def test_speed():
    make_xray("covid", 64, 0)
    t = time.perf_counter()
    for s in range(20):
        make_xray("pneumonia", 64, s)
    assert (time.perf_counter() - t) / 20 < 0.05  # target is well under 10 ms
