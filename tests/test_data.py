"""Data folders: scanning, unreadable files, clear errors, patient-grouped stratified splits, the Dataset."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gradcam.data import (
    PATIENT_PATTERN,
    Augmentation,
    ImageDataset,
    demo_model_path,
    group_of,
    read_image,
    scan_folder,
    split_indices,
)
from napari_gradcam.errors import DatasetError


def _save(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantoms") / "data", n_per_class=8, size=40, seed=3)


def test_scan_phantom_folder(phantom_dir):
    data = scan_folder(phantom_dir)
    assert data.classes == ["covid", "normal", "pneumonia"]
    assert data.class_counts() == {"covid": 8, "normal": 8, "pneumonia": 8}
    assert data.skipped == []
    assert len(set(data.groups)) == 24  # no patient ids in these names: one group per file
    assert sorted(data.labels.tolist()) == data.labels.tolist()
    # a model's classes pick and order them
    sub = scan_folder(phantom_dir, classes=["normal", "covid"])
    assert sub.classes == ["normal", "covid"] and len(sub) == 16
    assert len(sub.skipped) == 8


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            _save(tmp_path / c / f"{c}{i}.png", rng.integers(0, 255, (20, 24), dtype=np.uint8))
    _save(tmp_path / "a" / "rgb.jpg", rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    (tmp_path / "a" / "garbage.png").write_bytes(b"not a png at all")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0")
    data = scan_folder(tmp_path)
    assert data.class_counts() == {"a": 4, "b": 3}
    names = sorted(p.name for p, _ in data.skipped)
    assert names == ["empty.jpg", "garbage.png", "notes.txt"]
    assert all(isinstance(r, str) and r for _, r in data.skipped)
    data.check_trainable()


@pytest.mark.parametrize(
    "case, words",
    [("missing", "No data folder"), ("empty", "No readable images"), ("single", "Only one class"),
     ("few", "at least"), ("loose", "subfolder"), ("file", "not a folder")],
)
def test_clear_one_sentence_errors(tmp_path, case, words):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    if case == "empty":
        root.mkdir()
        (root / "a").mkdir()
    elif case == "single":
        for i in range(4):
            _save(root / "only" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    elif case == "few":
        for i in range(4):
            _save(root / "a" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        _save(root / "b" / "0.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    elif case == "loose":
        _save(root / "0.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    elif case == "file":
        root.write_text("x")
    with pytest.raises(DatasetError) as e:
        scan_folder(root).check_trainable()
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.endswith(".")


def test_patient_groups_from_file_names(tmp_path):
    assert group_of(tmp_path / "person1_bacteria_1.jpeg", PATIENT_PATTERN) == "person1"
    assert group_of(tmp_path / "person1_virus_7.jpeg", PATIENT_PATTERN) == "person1"
    assert group_of(tmp_path / "person12_bacteria_3.jpeg", PATIENT_PATTERN) == "person12"
    assert group_of(tmp_path / "IM-0115-0001.jpeg", PATIENT_PATTERN) == "IM-0115"
    assert group_of(tmp_path / "NORMAL2-IM-0383-0001.jpeg", PATIENT_PATTERN) == "NORMAL2-IM-0383"
    assert group_of(tmp_path / "normal_0003.png", PATIENT_PATTERN) == "normal_0003"
    assert group_of(tmp_path / "p7_scan2.png", r"p(\d+)_") == "7"
    assert group_of(tmp_path / "person1_x.png", None) == "person1_x"


def test_split_is_stratified_grouped_and_deterministic():
    rng = np.random.default_rng(1)
    labels, groups = [], []
    for g in range(400):  # 400 patients with 1-4 images, 25 % class 0
        c = int(rng.random() < 0.75)
        for _ in range(rng.integers(1, 5)):
            labels.append(c)
            groups.append(f"p{g}")
    labels = np.array(labels)
    tr, va = split_indices(labels, groups, 0.2, seed=0)
    assert len(tr) + len(va) == len(labels) and not set(tr) & set(va)
    gtr, gva = {groups[i] for i in tr}, {groups[i] for i in va}
    assert not gtr & gva  # no patient on both sides
    for c in (0, 1):
        frac = np.mean(labels[va] == c) if c else None
        share = (labels[va] == c).sum() / (labels == c).sum()
        assert 0.15 < share < 0.25, (c, share, frac)
    tr2, va2 = split_indices(labels, groups, 0.2, seed=0)
    assert np.array_equal(va, va2)
    _, va3 = split_indices(labels, groups, 0.2, seed=1)
    assert not np.array_equal(va, va3)


def test_split_needs_two_groups_per_class():
    with pytest.raises(DatasetError, match="only one patient"):
        split_indices([0, 0, 1, 1], ["a", "a", "b", "c"], 0.5)


def test_csv_listing(tmp_path, phantom_dir):
    rows = ["path,label,group"]
    for i, p in enumerate(sorted(phantom_dir.rglob("*.png"))):
        rows.append(f"{p},{p.parent.name.upper()},pt{i // 2}")
    rows.append(f"{tmp_path / 'missing.png'},NORMAL,x")
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    data = scan_folder(None, csv=csv)
    assert data.classes == ["COVID", "NORMAL", "PNEUMONIA"] and len(data) == 24
    assert len(set(data.groups)) == 12
    assert [p.name for p, _ in data.skipped] == ["missing.png"]
    tr, va = data.split(0.25, seed=0)
    assert not set(tr.groups) & set(va.groups)


def test_dataset_matches_inference_preprocessing(tmp_path):
    """Training inputs are exactly what predict() feeds the network (up to uint8 caching)."""
    import torch

    import napari_gradcam as ng
    from napari_gradcam.preprocess import bundle_tensor

    rng = np.random.default_rng(0)
    _save(tmp_path / "a" / "gray16.tif", rng.integers(0, 4000, (50, 70), dtype=np.uint16))
    _save(tmp_path / "a" / "rgb.png", rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    _save(tmp_path / "b" / "small.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    data = scan_folder(tmp_path, group_pattern=None)
    for channels in (1, 3):
        b = ng.build_model("simple_cnn", ["a", "b"], in_channels=channels, input_size=32)
        c = b.config
        for cache in (True, False):
            ds = ImageDataset(data, c.in_channels, c.input_size, c.mean, c.std, cache=cache)
            for i, item in enumerate(data.items):
                x, y = ds[i]
                ref = bundle_tensor(b, [read_image(item.path)])[0]
                assert x.shape == (channels, 32, 32) and y == item.label
                tol = 1.01 / 255 / min(c.std) if cache else 1e-5
                assert torch.allclose(x, ref, atol=tol)


def test_images_that_fail_to_decode_are_replaced_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            _save(tmp_path / c / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "truncated.png").write_bytes(good[:60])  # the header reads, the pixels do not
    data = scan_folder(tmp_path)
    assert len(data) == 9  # the header check passes
    for cache in (True, False):
        ds = ImageDataset(data, 1, 16, [0.5], [0.25], cache=cache)
        progress = list(ds.load())
        assert progress == ([(9, 9)] if cache else [])
        xs = [ds[i][0] for i in range(len(ds))]
        assert all(x.shape == (1, 16, 16) for x in xs)
        assert [p.name for p, _ in ds.failed] == ["truncated.png"]
        if cache:
            assert ds.fully_cached


def test_augmentation_batched():
    import torch

    x = torch.rand(6, 1, 24, 24)
    assert torch.equal(Augmentation(0, 0, 0, 0, 0)(x), x)
    aug = Augmentation()
    y1 = aug(x, generator=torch.Generator().manual_seed(0))
    y2 = aug(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    assert 0 <= float(y1.min()) and float(y1.max()) <= 1
    diffs = (y1 - x).abs().mean(dim=(1, 2, 3))
    assert len(set(np.round(diffs.numpy(), 6))) == 6  # each image its own parameters
    assert aug(x[0]).shape == x[0].shape
    # flips only on request
    ramp = torch.linspace(0, 1, 24).repeat(24, 1)[None, None].repeat(32, 1, 1, 1)
    no_flip = Augmentation(0, 0, 0, 0, 0)(ramp)
    flipped = Augmentation(0, 0, 0, 0, 0, flips=True)(ramp, generator=torch.Generator().manual_seed(0))
    n_flipped = int((flipped[:, 0, 0, 0] > 0.5).sum())
    assert torch.equal(no_flip, ramp) and 0 < n_flipped < 32
    # hide-and-seek: hidden cells take the image's mean
    hidden = Augmentation(0, 0, 0, 0, 0, erase=1.0)(x)
    assert torch.allclose(hidden, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    some = Augmentation(0, 0, 0, 0, 0, erase=0.5, erase_grid=4)(x, generator=torch.Generator().manual_seed(1))
    changed = float((some != x).float().mean())
    assert 0.2 < changed < 0.8


def test_demo_model_is_shipped():
    import napari_gradcam as ng

    path = demo_model_path()
    assert path.is_file() and path.stat().st_size < 5 * 2**20
    b = ng.load_model(path, device="cpu")
    assert b.classes == ["normal", "pneumonia", "covid"] and b.architecture == "simple_cnn"
    assert b.config.training.get("epochs_done", 0) >= 1
