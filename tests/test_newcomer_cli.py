"""What a newcomer meets on the command line (#14): several classes on one brightness scale, one
colour per class with a legend, the default tile at the model's training scale, lazy TIFF / zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gradcam.cli import main
from napari_gradcam.engine.result import Heatmap
from napari_gradcam.engine.scaling import SCALES, check_scale, scale_heatmaps

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
CLASSES = ["normal", "pneumonia", "covid"]


def _heat(target_index: int, score: float, peak: float, data: np.ndarray) -> Heatmap:
    return Heatmap(data.astype(np.float32), data[::4, ::4], peak, CLASSES[target_index], target_index, score,
                   np.zeros(3, np.float32), "features", "gradcam")


# ----------------------------------------------------------------------------- scaling
def test_scales_known_answers():
    rng = np.random.default_rng(0)
    maps = [rng.random((16, 16)) for _ in range(3)]
    for m in maps:
        m /= m.max()  # explain's maps: each to its own maximum
    heats = [_heat(k, s, p, m) for k, (s, p, m) in enumerate(zip((0.0, 0.25, 0.75), (2.0, 8.0, 4.0), maps))]
    prob = scale_heatmaps(heats, "probability")
    assert prob[0].data.max() == 0  # p = 0: dark
    np.testing.assert_allclose(prob[1].data, 0.25 * maps[1], rtol=1e-6)
    np.testing.assert_allclose(prob[2].data, 0.75 * maps[2], rtol=1e-6)
    shared = scale_heatmaps(heats, "shared")  # raw maxima 2, 8, 4 -> 1/4, 1, 1/2
    for h, f, m in zip(shared, (0.25, 1.0, 0.5), maps):
        np.testing.assert_allclose(h.data, f * m, rtol=1e-6)
    each = scale_heatmaps(heats, "each")
    for h, m in zip(each, maps):
        np.testing.assert_allclose(h.data, m, rtol=1e-6)
    assert heats[0].data.max() == 1  # the inputs are left alone
    assert all(h.data.dtype == np.float32 for h in prob + shared + each)
    assert check_scale("Shared") == "shared" and set(SCALES) == {"probability", "shared", "each"}
    with pytest.raises(Exception, match="Unknown heatmap scale"):
        check_scale("loud")


@pytest.fixture(scope="module")
def demo():
    from napari_gradcam import load_model
    from napari_gradcam.data import demo_model_path

    if not demo_model_path().is_file():
        pytest.skip("no demo model")
    return load_model(demo_model_path(), device="cpu")


def test_a_class_with_p_0_is_dark(demo):
    """On a pneumonia X-ray the demo model gives normal and covid p ~ 0: their maps are dark, by default
    in the CLI; 'each' (the old behaviour) lights them up as brightly as pneumonia's."""
    from napari_gradcam import explain
    from napari_gradcam.phantoms import make_xray

    image = make_xray("pneumonia", size=256, seed=7).image
    heats = explain(demo, image, "gradcam", target="all")
    scores = {h.target: h.score for h in heats}
    assert scores["pneumonia"] > 0.99 and scores["normal"] < 1e-3 and scores["covid"] < 1e-3
    by_prob = {h.target: h.data.max() for h in scale_heatmaps(heats, "probability")}
    assert by_prob["pneumonia"] > 0.9 and by_prob["normal"] < 1e-3 and by_prob["covid"] < 1e-3
    by_each = {h.target: h.data.max() for h in scale_heatmaps(heats, "each")}
    assert min(by_each.values()) > 0.9  # each to its own maximum: the p = 0 classes glow too


def test_explain_all_scale_and_legend(demo, tmp_path, capsys):
    import tifffile
    from PIL import Image

    from napari_gradcam.colours import class_colour
    from napari_gradcam.data import demo_model_path
    from napari_gradcam.phantoms import make_xray

    src = tmp_path / "x.tif"
    tifffile.imwrite(src, make_xray("pneumonia", size=128, seed=7).image)
    stacks = {}
    for scale in ("probability", "each"):
        out, ov = tmp_path / f"{scale}.tif", tmp_path / f"{scale}.png"
        assert main(["explain", str(demo_model_path()), str(src), "--target", "all", "--scale", scale,
                     "--out", str(out), "--overlay", str(ov)]) == 0
        text = capsys.readouterr().out
        assert f"written to {out}" in text and f"written to {ov}" in text and f"scale: {scale}" in text
        stacks[scale] = tifffile.imread(out)
        meta = json.loads(tifffile.TiffFile(out).shaped_metadata[0]["napari_gradcam"])
        assert meta["scale"] == scale and meta["targets"] == CLASSES
    normal, pneumonia = CLASSES.index("normal"), CLASSES.index("pneumonia")
    assert stacks["probability"][normal].max() < 1e-3 and stacks["probability"][pneumonia].max() > 0.9
    assert stacks["each"][normal].max() > 0.9
    rgb = np.asarray(Image.open(tmp_path / "probability.png"))
    assert rgb.shape[0] > 128 and rgb.shape[1] >= 128  # the image, and a legend strip below it
    legend = rgb[128:].reshape(-1, 3)
    for k in range(3):  # every class's colour is in the legend
        want = np.round(255 * np.asarray(class_colour(k))).astype(int)
        assert (np.abs(legend.astype(int) - want).max(axis=1) == 0).sum() > 20, CLASSES[k]
    # the single-class overlay is the image's size, as before
    assert main(["explain", str(demo_model_path()), str(src), "--out", str(tmp_path / "one.tif"),
                 "--overlay", str(tmp_path / "one.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (128, 128, 3)


def test_tile_overlay_colours_match_the_widget(tmp_path):
    """tile's overlay colours a pixel whose strongest class is c with class c's colour (the widget's)."""
    from napari_gradcam.cli._common import classes_overlay_rgb
    from napari_gradcam.colours import class_colour

    image = np.zeros((4, 6), np.uint8)
    heat = np.zeros((2, 4, 6), np.float32)
    heat[0, :, :3] = 1
    heat[1, :, 3:] = 1
    rgb = classes_overlay_rgb(image, heat, alpha=1.0, class_indices=[2, 0])
    np.testing.assert_array_equal(rgb[0, 0], np.round(255 * np.array(class_colour(2))))
    np.testing.assert_array_equal(rgb[0, 5], np.round(255 * np.array(class_colour(0))))


# ----------------------------------------------------------------------------- default tile
def test_default_tile_is_the_training_scale(tiny_bundle):
    from copy import deepcopy

    from napari_gradcam.engine.tiling import default_tile

    assert default_tile(tiny_bundle) == tiny_bundle.input_size  # nothing recorded
    b = deepcopy(tiny_bundle)
    b.config.training = {"source_size": 200}
    assert default_tile(b) == 200
    for bad in (True, "512", 3, None):
        b.config.training = {"source_size": bad}
        assert default_tile(b) == b.input_size


def test_default_tile_on_the_sample_mosaic(demo):
    """The demo model records its training scale (512 px, a whole chest), so the default tile shows it whole
    chests: each class's share of the sample mosaic (one third each) comes out within 10 points, at the
    default overlap (0.5) as at 0, 0.75 and 0.4 (a stride of 307 px, which does not divide the tile: the
    non-overlapping tiles are added).  Three tiles in four straddle two chests at 0.5 overlap and are
    called abnormal when either chest is; the breakdown counts each pixel once, from the chain of
    non-overlapping tiles (see docs/methods.md, Tiled heatmaps and large images)."""
    from napari_gradcam.engine import tiled_heatmaps
    from napari_gradcam.phantoms import CLASSES as PH_CLASSES, make_mosaic

    assert demo.config.training["source_size"] == 512
    image, truth = make_mosaic((3072, 3072), tile=512, seed=7)  # the plugin's sample mosaic
    for overlap, tiles in ((None, 121), (0.0, 36), (0.75, 441), (0.4, 14 * 14)):
        result = tiled_heatmaps(demo, image) if overlap is None else tiled_heatmaps(demo, image, overlap=overlap)
        assert result.tile == 512 and result.tiles == tiles
        for k, c in enumerate(PH_CLASSES):
            assert abs(result.breakdown[c] - float((truth == k).mean())) < 0.10, (overlap, result.breakdown)


# ----------------------------------------------------------------------------- lazy TIFF / zarr
@pytest.fixture(scope="module")
def wide_image():
    from napari_gradcam.phantoms import make_mosaic

    return make_mosaic((96, 2100), tile=96, seed=2)[0]  # wider than a dask chunk (2048): stays lazy


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(build_model("simple_cnn", CLASSES, 1, 32), path)
    return path


def _tile(model, src, out):
    assert main(["tile", str(model), str(src), "--tile", "32", "--overlap", "0", "--out", str(out), "-q"]) == 0
    return json.loads((out / "breakdown.json").read_text())


@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_tile_reads_large_images_lazily(tiny_model, wide_image, tmp_path, monkeypatch, capsys, kind):
    """Over the in-memory limit (lowered here) a TIFF or zarr store is read block by block: the whole image
    is never read, and the outputs equal the in-memory run's."""
    import tifffile

    import napari_gradcam.cli._common as common
    import napari_gradcam.engine.tiling.run as tiling
    import napari_gradcam.preprocess as preprocess

    tif = tmp_path / "wide.tif"
    tifffile.imwrite(tif, wide_image)
    ref = _tile(tiny_model, tif, tmp_path / "ref")  # under the limit: read whole
    assert ref["lazy"] is False
    if kind == "tiff":
        src = tmp_path / "big.tif"
        tifffile.imwrite(src, wide_image, tile=(64, 64))
    else:
        zarr = pytest.importorskip("zarr")
        src = tmp_path / "big.zarr"
        z = zarr.open(str(src), mode="w", shape=wide_image.shape, chunks=(64, 512), dtype=wide_image.dtype)
        z[:] = wide_image
    limit = 100_000
    assert wide_image.size > limit
    monkeypatch.setattr(preprocess, "MAX_PIXELS", limit)
    monkeypatch.setattr(tiling, "MAX_PIXELS", limit)

    def whole_read(*args, **kwargs):
        raise AssertionError("the whole image was read into memory")

    monkeypatch.setattr(common, "_image", whole_read)
    info = _tile(tiny_model, src, tmp_path / "lazy")
    assert info["lazy"] is True and info["shape"] == list(wide_image.shape)
    assert info["breakdown"] == pytest.approx(ref["breakdown"], abs=1e-4)
    for c in CLASSES:
        np.testing.assert_allclose(tifffile.imread(tmp_path / "lazy" / f"heatmap_{c}.tif"),
                                   tifffile.imread(tmp_path / "ref" / f"heatmap_{c}.tif"), atol=1e-5)
    assert not list((tmp_path / "lazy").glob(".heatmaps-*"))  # the temporary store is gone
    assert "share of the image" in capsys.readouterr().out
