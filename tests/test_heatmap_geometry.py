"""A heatmap carries its own geometry (issue 21, point 1): the map on its grid, its placement on the image,
the full-size map only when asked for; the layer rule of the registry; explanations of a batch in one pass."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gradcam.engine import applicable_layer, explain, explain_batch
from napari_gradcam.engine import result as result_module

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

CASES = [  # (method, keyword arguments): layer maps, fused layers, smoothing, shifts, signed and unsigned pixels
    ("gradcam", {}), ("cam", {}), ("layercam-fine", {}), ("gradcam", {"smooth": "aug"}),
    ("gradcam", {"shifts": 2}), ("saliency", {}), ("integrated-gradients", {}), ("scorecam", {}),
]


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).random((50, 37)).astype(np.float32)


def _placed_upsampling(coarse: np.ndarray, scale, offset, shape) -> np.ndarray:
    """An independent reading of the placement: each image pixel (y, x) reads the grid at
    ((y - ty) / sy, (x - tx) / sx), bilinear, the edge cells extended (scipy, not torch)."""
    from scipy import ndimage

    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    coords = [(yy - offset[0]) / scale[0], (xx - offset[1]) / scale[1]]
    return ndimage.map_coordinates(coarse.astype(np.float64), coords, order=1, mode="nearest")


@pytest.mark.parametrize("method,kwargs", CASES, ids=[f"{m}-{'-'.join(map(str, k.items()))}" for m, k in CASES])
def test_the_coarse_map_placed_on_the_image_is_the_full_map(tiny_bundle, image, method, kwargs):
    h = explain(tiny_bundle, image, method, target="pneumonia", **kwargs)
    assert h.image_shape == image.shape and h.coarse.dtype == np.float32 and h._data is None  # nothing upsampled yet
    sy, sx = h.image_shape[0] / h.coarse.shape[0], h.image_shape[1] / h.coarse.shape[1]
    assert h.scale == pytest.approx((sy, sx)) and h.offset == pytest.approx(((sy - 1) / 2, (sx - 1) / 2))
    low = -1 if h.signed else 0
    expected = np.clip(_placed_upsampling(h.coarse, h.scale, h.offset, image.shape), low, 1)
    np.testing.assert_allclose(h.data, expected, atol=1e-5)
    assert h.data.shape == image.shape and h.data.dtype == np.float32
    assert h.family == ("attribution" if method in ("saliency", "integrated-gradients") else "cam")
    if kwargs.get("shifts", 1) == 1 and "smooth" not in kwargs:  # the map is the raw one, normalised
        raw = np.abs(h.raw) if h.signed else np.maximum(h.raw, 0)
        np.testing.assert_allclose(np.abs(h.coarse) if h.signed else h.coarse, raw / raw.max(), atol=1e-6)
        assert float(raw.max()) == pytest.approx(h.max)


def test_layers_and_smoothing_are_a_tuple_and_a_set(tiny_bundle, image):
    fine = explain(tiny_bundle, image, "layercam-fine", smooth=["eigen", "aug"])
    assert isinstance(fine.layers, tuple) and len(fine.layers) == 3 and fine.layer == "+".join(fine.layers)
    assert fine.smoothing == frozenset({"aug", "eigen"}) and fine.smooth == "aug+eigen"
    pixels = explain(tiny_bundle, image, "saliency")
    assert pixels.layers == () and pixels.layer == "input" and pixels.smoothing == frozenset()


def test_the_earlier_full_size_form_still_builds_a_heatmap():
    data = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    h = result_module.Heatmap(data, data[::4, ::4], 2.0, "a", 0, 0.5, np.zeros(2, np.float32), "x+y", "gradcam",
                              smooth="aug")
    assert h.data is h.coarse and h.layers == ("x", "y") and h.smoothing == {"aug"}
    assert h.scale == (1.0, 1.0) and h.offset == (0.0, 0.0)
    half = h.scaled(0.5)
    np.testing.assert_array_equal(half.data, data * np.float32(0.5))
    assert half.layers == h.layers and half.target == "a"


def test_the_layer_rule_is_the_registrys(tiny_bundle):
    assert applicable_layer("gradcam", "features.block3") == "features.block3"
    assert applicable_layer("Grad-CAM++", ["a", "b"]) == ["a", "b"]
    assert applicable_layer("cam", "features.block3") is None            # CAM: only the layer feeding the head
    assert applicable_layer("saliency", "features.block3") is None       # pixel attributions: no layer
    assert applicable_layer("guided-gradcam", "features") == "features"  # its Grad-CAM part takes one
    assert applicable_layer("gradcam", "") is None and applicable_layer("gradcam", None) is None


@pytest.mark.parametrize("method", ["gradcam", "cam", "scorecam", "saliency"])
def test_a_batch_costs_one_batched_pass_and_matches_single_images(tiny_bundle, method):
    import torch

    rng = np.random.default_rng(0)
    images = [rng.random((40, 40)).astype(np.float32), rng.random((48, 30)).astype(np.float32),
              rng.random((32, 32)).astype(np.float32)]
    singles = [explain(tiny_bundle, im, method, target="all") for im in images]
    sizes: list[int] = []
    handle = tiny_bundle.model.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    try:
        batch = explain(tiny_bundle, images, method, target="all")
    finally:
        handle.remove()
    assert sizes[0] == 3  # the first pass holds the whole batch
    if method in ("gradcam", "cam"):
        assert sizes == [3]  # and it is the only one: all classes from it
    if method == "saliency":
        assert sizes == [3, 3, 3]  # one backward per class, each over the whole batch
    assert isinstance(batch, list) and len(batch) == 3
    for one, many in zip(singles, batch):
        assert [h.target for h in many] == [h.target for h in one] == tiny_bundle.classes
        for a, b in zip(one, many):
            assert b.image_shape == a.image_shape and b.score == pytest.approx(a.score, abs=1e-5)
            np.testing.assert_allclose(b.coarse, a.coarse, atol=1e-4)
    stack = explain_batch(tiny_bundle, np.stack([images[0], images[0]]), method)  # (N, H, W): each its own class
    assert isinstance(stack, list) and len(stack) == 2
    own = [int(torch.tensor(h.probabilities).argmax()) for h in stack]
    assert [h.target_index for h in stack] == own


def test_a_batch_explains_each_image_for_its_own_predicted_class(tiny_bundle):
    rng = np.random.default_rng(1)
    images = [rng.random((32, 32)).astype(np.float32) * s for s in (0.1, 1.0, 5.0, 50.0)]
    for method in ("cam", "gradcam", "ablationcam"):
        out = explain(tiny_bundle, images, method)
        for im, h in zip(images, out):
            alone = explain(tiny_bundle, im, method)
            assert h.target == alone.target == tiny_bundle.classes[int(np.argmax(h.probabilities))]
            np.testing.assert_allclose(h.coarse, alone.coarse, atol=1e-4)


def test_the_napari_layer_is_built_from_the_coarse_map(tiny_bundle, image, monkeypatch):
    """The napari layer builder reads the coarse map and its placement; the full-size map is never made."""
    pytest.importorskip("napari")
    from napari_gradcam._napari.layers import ImagePlane, heatmap_layer

    calls = []
    real = result_module.full_size_map
    monkeypatch.setattr(result_module, "full_size_map", lambda *a: calls.append(1) or real(*a))
    plane = ImagePlane(image, (), np.array([2.0, 0.5]), np.array([10.0, -3.0]), name="img")
    for method, kwargs in CASES:
        h = explain(tiny_bundle, image, method, **kwargs)
        data, kw, kind = heatmap_layer(h, plane, factor=0.5)
        assert kind == "image" and not calls
        np.testing.assert_allclose(data, h.coarse * np.float32(0.5))
        np.testing.assert_allclose(kw["scale"], np.array([2.0, 0.5]) * h.scale)
        np.testing.assert_allclose(kw["translate"], np.array([10.0, -3.0]) + np.array([2.0, 0.5]) * h.offset)
        assert kw["metadata"]["image_shape"] == list(image.shape)
    assert h.data.shape == image.shape and calls == [1]  # the counter counts


def test_the_explain_panel_never_computes_the_full_size_map(make_napari_viewer, qtbot, model_file, monkeypatch):
    """A real viewer: the layer lies exactly over the image (napari's own transforms), and the Explain
    panel's whole path (engine, layer building) never upsamples the map to the image."""
    pytest.importorskip("pytestqt")
    import torchvision  # noqa: F401 - before any viewer (see _napari/_compat.py)
    from napari_helpers import dock, load, wait

    calls = []
    real = result_module.full_size_map
    monkeypatch.setattr(result_module, "full_size_map", lambda *a: calls.append(1) or real(*a))
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    image = np.random.default_rng(2).random((90, 70)).astype(np.float32)
    src = viewer.add_image(image, name="img", scale=(0.5, 2.0), translate=(4.0, -1.0))
    ew.run(src, method="gradcam", target="pneumonia")
    wait(qtbot, ew)
    assert ew.last_error is None and not calls
    heat = viewer.layers[-1]
    h = explain(__import__("napari_gradcam").load_model(model_file), image, "gradcam", target="pneumonia")
    # image pixel (y, x) -> world -> the heat layer's grid: where the placement says it is
    for y, x in [(0, 0), (89, 69), (45.5, 10)]:
        world = src.data_to_world((y, x))
        grid = heat.world_to_data(world)
        np.testing.assert_allclose(grid, [(y - h.offset[0]) / h.scale[0], (x - h.offset[1]) / h.scale[1]],
                                   atol=1e-6)
