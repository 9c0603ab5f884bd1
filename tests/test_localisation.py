"""Localisation metrics: hand-computed cases, deletion/insertion, evaluation flow, mask folders, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gradcam.errors import DatasetError, GradCamError, ImageError
from napari_gradcam.localisation import (
    METRIC_KEYS,
    LocalisationReport,
    deletion_insertion,
    energy_inside,
    evaluate_localisation,
    iter_evaluate_localisation,
    load_masks_folder,
    localisation_scores,
    localize_folder,
    mask_share,
    pointing_game,
    read_mask,
    threshold_scores,
)


# ----------------------------------------------------------------------------- hand-computed cases
@pytest.fixture()
def square():
    """A 10x10 image: mask = top-left 5x5 (25 px, share 0.25)."""
    m = np.zeros((10, 10), bool)
    m[:5, :5] = True
    return m


def test_energy_quarter(square):
    # 1 on rows 0-4 (50 px, 25 of them on the mask), 2 on rows 5-9 left (25 px, off the mask):
    # inside 25, total 25 + 25 + 50 = 100 -> exactly 0.25
    h = np.zeros((10, 10))
    h[:5, :] = 1.0
    h[5:, :5] = 2.0
    assert energy_inside(h, square) == 0.25
    assert mask_share(square) == 0.25
    assert localisation_scores(h, square)["energy_ratio"] == 1.0
    # a uniform map scores the mask's share; weights change the share: inside 25 / (25 + 25 + 2 * 50)
    assert energy_inside(np.ones((10, 10)), square) == 0.25
    h2 = np.ones((10, 10))
    h2[:, 5:] = 2.0
    assert energy_inside(h2, square) == pytest.approx(25 / 150)
    # a map on the mask only
    assert energy_inside(square * 0.3, square) == 1.0


def test_energy_clips_negative_and_zero_map(square):
    h = np.full((10, 10), -1.0)
    h[0, 0] = 1.0
    assert energy_inside(h, square) == 1.0
    assert energy_inside(np.zeros((10, 10)), square) == 0.0


def test_iou_dice_fixed_and_otsu(square):
    # two-level map: 0.8 on rows 0-2 (30 px, 15 on the mask), 0.2 elsewhere
    h = np.full((10, 10), 0.2)
    h[:3, :] = 0.8
    # fixed 0.5 of the max (0.4): keeps the 30 px -> inter 15, union 30 + 25 - 15 = 40
    s = threshold_scores(h, square, 0.5)
    assert s["iou"] == pytest.approx(15 / 40)
    assert s["dice"] == pytest.approx(2 * 15 / (30 + 25))
    assert s["area"] == pytest.approx(0.30)
    # Otsu on two levels separates them: the same 30 px
    o = threshold_scores(h, square, "otsu")
    assert 0.2 <= o["threshold"] < 0.8
    assert o["iou"] == pytest.approx(15 / 40) and o["dice"] == pytest.approx(30 / 55)
    # fixed level 0.1 (of max 0.8 = 0.08) keeps everything: IoU = share, Dice = 2*25/125
    a = threshold_scores(h, square, 0.1)
    assert a["iou"] == pytest.approx(0.25) and a["dice"] == pytest.approx(0.4)
    # the level is relative to the maximum (a pixel at exactly the level is kept)
    assert threshold_scores(h * 10, square, 0.5)["iou"] == pytest.approx(15 / 40)
    assert threshold_scores(h, square, 0.25)["area"] == pytest.approx(1.0)  # 0.2 >= 0.25 * 0.8
    # a perfect map
    p = threshold_scores(square.astype(float), square, "otsu")
    assert p["iou"] == 1.0 and p["dice"] == 1.0


def test_threshold_zero_map_and_empty_mask(square):
    z = np.zeros((10, 10))
    assert threshold_scores(z, square, "otsu")["iou"] == 0.0
    assert threshold_scores(z, square, 0.5)["dice"] == 0.0
    both_empty = threshold_scores(z, np.zeros((10, 10), bool), 0.5)
    assert np.isnan(both_empty["iou"]) and np.isnan(both_empty["dice"])
    with pytest.raises(GradCamError, match="between 0 and 1"):
        threshold_scores(z, square, 1.5)
    with pytest.raises(GradCamError, match="otsu"):
        threshold_scores(z, square, "median")


def test_pointing_game(square):
    h = np.zeros((10, 10))
    h[4, 4] = 1.0  # inside (corner of the mask)
    assert pointing_game(h, square) is True
    h = np.zeros((10, 10))
    h[4, 7] = 1.0  # 3 px right of the mask's edge column 4
    assert pointing_game(h, square) is False
    assert pointing_game(h, square, tolerance=2) is False
    assert pointing_game(h, square, tolerance=3) is True
    h = np.zeros((10, 10))
    h[7, 7] = 1.0  # diagonal distance from (4, 4): sqrt(18) = 4.24
    assert pointing_game(h, square, tolerance=4) is False
    assert pointing_game(h, square, tolerance=4.25) is True
    # all-zero map points nowhere, even if argmax (0, 0) is in the mask
    assert pointing_game(np.zeros((10, 10)), square) is False
    assert pointing_game(-np.ones((10, 10)), square, tolerance=100) is False
    # ties: the first maximum in row-major order
    h = np.zeros((10, 10))
    h[9, 9] = h[0, 0] = 1.0
    assert pointing_game(h, square) is True
    # label masks (ints) work, nonzero = lesion
    assert pointing_game(h, square.astype(np.uint8) * 255) is True
    with pytest.raises(GradCamError):
        pointing_game(h, square, tolerance=-1)


def test_localisation_scores_keys(square):
    h = np.zeros((10, 10))
    h[:5, :] = 1.0
    s = localisation_scores(h, square, tolerance=2, level=0.5)
    assert set(METRIC_KEYS) <= set(s)
    assert s["pointing"] is True and s["pointing_tol"] is True
    assert s["energy"] == 0.5 and s["mask_share"] == 0.25 and s["energy_ratio"] == 2.0
    assert s["iou_fixed"] == 0.5 and s["dice_fixed"] == pytest.approx(2 / 3)
    assert s["iou_otsu"] == 0.5
    e = localisation_scores(h, np.zeros((10, 10), bool))
    assert np.isnan(e["energy_ratio"]) and e["pointing"] is False


def test_shape_mismatch_and_bad_values(square):
    with pytest.raises(ImageError, match="different shapes"):
        energy_inside(np.zeros((10, 11)), square)
    with pytest.raises(ImageError, match="different shapes"):
        localisation_scores(np.zeros((5, 5)), square)
    with pytest.raises(ImageError, match="2D"):
        pointing_game(np.zeros((10, 10, 3)), square)
    h = np.zeros((10, 10))
    h[1, 1] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        threshold_scores(h, square, "otsu")


# ----------------------------------------------------------------------------- deletion / insertion
def test_deletion_insertion_curves(tiny_bundle):
    import napari_gradcam as ng

    rng = np.random.default_rng(0)
    image = (rng.random((40, 40)) * 255).astype(np.uint8)
    heat = rng.random((40, 40)).astype(np.float32)
    full = ng.predict(tiny_bundle, image)
    out = deletion_insertion(tiny_bundle, image, heat, 1, steps=6, baseline="mean", batch_size=5)
    assert out["fractions"].shape == (7,) and out["deletion"].shape == (7,) and out["insertion"].shape == (7,)
    assert out["fractions"][0] == 0 and out["fractions"][-1] == 1
    # deletion starts at the full image's probability; insertion ends there
    assert out["deletion"][0] == pytest.approx(full[1], abs=1e-5)
    assert out["insertion"][-1] == pytest.approx(full[1], abs=1e-5)
    # both ends meet at the baseline's probability
    assert out["deletion"][-1] == pytest.approx(out["insertion"][0], abs=1e-6)
    for k in ("deletion_auc", "insertion_auc"):
        assert 0.0 <= out[k] <= 1.0
    # the AUC is the trapezoid area under the curve
    assert out["deletion_auc"] == pytest.approx(np.trapezoid(out["deletion"], out["fractions"]))
    for baseline in ("blur", "zero"):
        o = deletion_insertion(tiny_bundle, image, heat, "covid", steps=2, baseline=baseline)
        assert o["deletion"].shape == (3,) and o["target_index"] == 2
    rgb = np.stack([image] * 3, axis=-1)
    o = deletion_insertion(tiny_bundle, rgb, heat, 0, steps=2)
    assert o["deletion"][0] == pytest.approx(ng.predict(tiny_bundle, rgb)[0], abs=1e-5)
    with pytest.raises(ImageError, match="does not match"):
        deletion_insertion(tiny_bundle, image, heat[:10], 0)
    with pytest.raises(GradCamError, match="baseline"):
        deletion_insertion(tiny_bundle, image, heat, 0, baseline="noise")


# ----------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def phantom_set():
    from napari_gradcam.phantoms import make_batch

    return make_batch(2, size=48, seed=5)  # normal, pneumonia, covid x 2


def test_evaluate_localisation_flow(tiny_bundle, phantom_set):
    images, masks, labels = phantom_set
    seen = []
    rep = evaluate_localisation(tiny_bundle, list(images), list(masks), labels=list(labels),
                                progress=lambda d, t: seen.append((d, t)), tolerance=3)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert rep.n_images == 6 and rep.n_empty == 2 and rep.n_evaluated == 4
    assert rep.methods == ["cam", "gradcam", "gradcam++"]
    assert len(rep.rows) == 4 * 3
    names = ["normal", "pneumonia", "covid"]
    for row in rep.rows:
        assert row.target_source == "label" and row.target in ("pneumonia", "covid")
        assert set(METRIC_KEYS) <= set(row.metrics)
        assert 0 <= row.metrics["energy"] <= 1
    # targets follow the labels
    lesion_labels = [names[lab] for lab in labels if lab != 0]
    assert [r.target for r in rep.rows if r.method == "cam"] == lesion_labels
    summ = rep.summary()
    assert summ["gradcam"]["n"] == 4 and 0 <= summ["gradcam"]["pointing"] <= 1
    table = rep.table()
    assert "Grad-CAM++" in table and "pointing@3px %" in table and "2 with an empty mask skipped" in table
    assert rep.table(markdown=True).splitlines()[1].startswith("|---|")


def test_evaluate_curves_predicted_and_generator(tiny_bundle, phantom_set):
    images, masks, labels = phantom_set
    gen = iter_evaluate_localisation(tiny_bundle, list(images[1:3]), list(masks[1:3]), methods=["gradcam"],
                                     target="predicted", curves=True, steps=3)
    progress = []
    try:
        while True:
            progress.append(next(gen))
    except StopIteration as stop:
        rep = stop.value
    assert progress[-1] == (2, 2)
    assert len(rep.rows) == 2 and all(r.target_source == "predicted" for r in rep.rows)
    for r in rep.rows:
        assert 0 <= r.metrics["deletion_auc"] <= 1 and 0 <= r.metrics["insertion_auc"] <= 1
    assert "deletion AUC" in rep.table()


def test_evaluate_skips_undefined_method_and_errors(phantom_set):
    import torch

    import napari_gradcam as ng

    images, masks, labels = phantom_set
    torch.manual_seed(0)
    vgg = ng.build_model("alexnet", ["normal", "pneumonia", "covid"], input_size=64)
    rep = evaluate_localisation(vgg, [images[1]], [masks[1]], methods=("cam", "gradcam"), labels=[1])
    assert rep.methods == ["gradcam"] and any("cam was skipped" in n for n in rep.notes)
    assert len(rep.rows) == 1
    with pytest.raises(GradCamError, match="labels"):
        evaluate_localisation(vgg, [images[1]], [masks[1]], methods=("gradcam",))
    with pytest.raises(GradCamError, match="pair up"):
        evaluate_localisation(vgg, [images[1]], [], methods=("gradcam",), target="predicted")
    with pytest.raises(GradCamError, match="Unknown method"):
        evaluate_localisation(vgg, [images[1]], [masks[1]], methods=("lime",), target="predicted")


def test_evaluate_resizes_masks_of_other_resolution(tiny_bundle, phantom_set):
    images, masks, labels = phantom_set
    big = np.repeat(np.repeat(masks[1], 2, axis=0), 2, axis=1)
    rep = evaluate_localisation(tiny_bundle, [images[1]], [big], methods=["cam"], labels=[1])
    assert len(rep.rows) == 1 and any("resized" in n for n in rep.notes)
    with pytest.raises(ImageError, match="does not fit"):
        evaluate_localisation(tiny_bundle, [images[1]], [big[:, :50]], methods=["cam"], labels=[1])


def test_report_json_round_trip(tiny_bundle, phantom_set, tmp_path):
    images, masks, labels = phantom_set
    rep = evaluate_localisation(tiny_bundle, list(images[:3]), list(masks[:3]), labels=list(labels[:3]),
                                methods=["cam", "gradcam"])
    path = rep.to_json(tmp_path / "sub" / "loc.json")
    data = json.loads(path.read_text())  # strict JSON (NaN written as null)
    assert data["n_empty"] == 1 and data["n_evaluated"] == 2
    assert set(data["summary"]) == {"cam", "gradcam"}
    assert len(data["images"]) == 4
    back = LocalisationReport.from_json(path)
    for m in ("cam", "gradcam"):
        for k, v in rep.summary()[m].items():
            assert back.summary()[m][k] == pytest.approx(v)
    assert back.table() == rep.table()
    assert [r.name for r in back.rows] == [r.name for r in rep.rows]


# ----------------------------------------------------------------------------- folders
def test_load_masks_folder_phantom_layout(tmp_path):
    from napari_gradcam.phantoms import write_dataset

    write_dataset(tmp_path / "img", 2, size=32, seed=1, mask_dir=tmp_path / "mask")
    pairs = load_masks_folder(tmp_path / "img", tmp_path / "mask")
    assert len(pairs) == 6 and pairs.unmatched == []
    for img, m in pairs:
        assert img.relative_to(tmp_path / "img") == m.relative_to(tmp_path / "mask")
    # a missing mask is listed, not fatal
    (tmp_path / "mask" / "covid" / "covid_0001.png").unlink()
    pairs = load_masks_folder(tmp_path / "img", tmp_path / "mask")
    assert len(pairs) == 5 and [p.name for p in pairs.unmatched] == ["covid_0001.png"]
    # masks read as bool, nonzero = lesion
    m = read_mask(pairs[-1][1])
    assert m.dtype == bool and m.shape == (32, 32)


def test_load_masks_folder_flat_suffix_and_errors(tmp_path):
    from skimage import io

    img_dir, mask_dir = tmp_path / "images", tmp_path / "labels"
    (img_dir / "a").mkdir(parents=True)
    mask_dir.mkdir()
    io.imsave(img_dir / "a" / "x1.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    io.imsave(img_dir / "a" / "x2.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    io.imsave(mask_dir / "x1_mask.tif", np.ones((8, 8), np.uint16), check_contrast=False)
    pairs = load_masks_folder(img_dir, mask_dir)  # by stem, in a flat folder, with a _mask suffix
    assert [(i.name, m.name) for i, m in pairs] == [("x1.png", "x1_mask.tif")]
    assert [p.name for p in pairs.unmatched] == ["x2.png"]
    # images and masks in one folder
    io.imsave(img_dir / "a" / "x2_mask.png", np.ones((8, 8), np.uint8), check_contrast=False)
    same = load_masks_folder(img_dir, img_dir)
    assert [(i.name, m.name) for i, m in same] == [("x2.png", "x2_mask.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="None of the 3 images"):
        load_masks_folder(img_dir, tmp_path / "empty")
    with pytest.raises(DatasetError, match="No mask folder"):
        load_masks_folder(img_dir, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="No images"):
        load_masks_folder(tmp_path / "empty", mask_dir)


def test_load_masks_folder_survives_link_loops(tmp_path):
    """Links back to an enclosing folder are not followed; a linked image is paired once."""
    import os

    from skimage import io

    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    (img_dir / "a").mkdir(parents=True)
    mask_dir.mkdir()
    io.imsave(img_dir / "a" / "x1.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    io.imsave(mask_dir / "x1.png", np.ones((8, 8), np.uint8), check_contrast=False)
    os.symlink(img_dir, img_dir / "a" / "loop")          # a -> images -> a -> ...
    os.symlink(mask_dir, mask_dir / "again")
    os.symlink(img_dir / "a" / "x1.png", img_dir / "x1_alias.png")
    os.symlink(tmp_path / "gone.png", img_dir / "dangling.png")
    pairs = load_masks_folder(img_dir, mask_dir)
    assert [(i.name, m.name) for i, m in pairs] == [("x1.png", "x1.png")] and pairs.unmatched == []


def test_localize_folder(tiny_bundle, tmp_path):
    import napari_gradcam as ng
    from napari_gradcam.phantoms import write_dataset

    write_dataset(tmp_path / "img", 1, size=40, seed=2, mask_dir=tmp_path / "mask")
    (tmp_path / "mask" / "covid" / "covid_0000.png").unlink()
    model = ng.save_model(tiny_bundle, tmp_path / "m.safetensors")
    rep = localize_folder(model, tmp_path / "img", tmp_path / "mask", methods="cam,gradcam",
                          json_path=tmp_path / "out.json", device="cpu")
    assert rep.n_images == 2 and rep.n_empty == 1 and rep.n_evaluated == 1
    assert rep.methods == ["cam", "gradcam"]
    assert {r.name for r in rep.rows} == {"pneumonia/pneumonia_0000.png"}
    assert all(r.target == "pneumonia" and r.target_source == "label" for r in rep.rows)
    assert any("no mask" in n and "covid/covid_0000.png" in n for n in rep.notes)
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["settings"]["n_unmatched"] == 1 and data["images"][0]["name"] == "pneumonia/pneumonia_0000.png"


# ----------------------------------------------------------------------------- tolerance at 224 px
def test_pointing_tolerance_scales_from_224_px(tiny_bundle):
    """Zhang et al.'s tolerance is given at 224 px: 15 px there is 30 px on a 448 px image."""
    from napari_gradcam.localisation.metrics import scaled_tolerance

    assert scaled_tolerance(15, (448, 300), 224) == pytest.approx(30.0)
    assert scaled_tolerance(15, (100, 112), 224) == pytest.approx(7.5)
    assert scaled_tolerance(15, (448, 300)) == 15.0  # None: pixels as they are
    mask = np.zeros((448, 448), bool)
    mask[200:220, 100:120] = True
    heat = np.zeros((448, 448))
    heat[210, 140] = 1  # 21 px right of the mask
    assert not pointing_game(heat, mask, 15) and pointing_game(heat, mask, scaled_tolerance(15, heat.shape, 224))
    image = np.random.default_rng(0).random((448, 448)).astype(np.float32)
    scaled = evaluate_localisation(tiny_bundle, [image], [mask], methods=["gradcam"], target="predicted",
                                   tolerance=15, tolerance_at=224)
    plain = evaluate_localisation(tiny_bundle, [image], [mask], methods=["gradcam"], target="predicted", tolerance=15)
    assert scaled.settings["tolerance_at"] == 224 and plain.settings["tolerance_at"] is None
    assert any("15 px is given at 224 px" in n and "30.0 px at 448 px" in n for n in scaled.notes)
    assert "pointing@15px/224 %" in scaled.table() and "pointing@15px %" in plain.table()
    with pytest.raises(GradCamError, match="> 0 pixels"):
        evaluate_localisation(tiny_bundle, [image], [mask], methods=["gradcam"], target="predicted", tolerance_at=0)


def test_localize_folder_scales_the_tolerance_by_default(tiny_bundle, tmp_path):
    from napari_gradcam.phantoms import write_dataset

    images = write_dataset(tmp_path / "images", n_per_class=1, size=112, seed=9, mask_dir=tmp_path / "masks")
    report = localize_folder(tiny_bundle, images, tmp_path / "masks", methods="gradcam", tolerance=15)
    assert report.settings["tolerance_at"] == 224
    assert any("7.5 px at 112 px" in n for n in report.notes)
    report = localize_folder(tiny_bundle, images, tmp_path / "masks", methods="gradcam", tolerance=15, tolerance_at=None)
    assert not any("given at" in n for n in report.notes)
