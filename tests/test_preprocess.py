"""Any image -> the network's input: every dtype and shape, odd values, channels, geometry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_gradcam.errors import ImageError
from napari_gradcam.preprocess import (
    bundle_tensor,
    check_image,
    image_to_tensor,
    resize_maps,
    split_batch,
    to_channels,
    to_unit,
    value_range,
)

# no RuntimeWarning (overflow, invalid value, divide by zero) nor UserWarning (torch) anywhere in these tests
pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("error::RuntimeWarning"), pytest.mark.filterwarnings("error::UserWarning")]

DTYPES = ["bool", "uint8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"]
SHAPES = [(1, 1), (1, 9), (9, 1), (3, 5), (32, 32), (500, 300), (3, 5, 3), (1, 1, 3), (40, 20, 4), (500, 300, 3)]


def make(shape, dtype, seed=0) -> np.ndarray:
    """A random image spanning a good part of ``dtype``'s range."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == bool:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def raw_tensor(image, channels, size=None, vrange=None):
    """Before normalisation: mean 0, std 1 (and no resize unless ``size``)."""
    return image_to_tensor(check_image(image), channels, size or 0, [0.0] * channels, [1.0] * channels,
                           vrange=vrange, resize=size is not None)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_shape(dtype, shape, tiny_bundle, tiny_bundle_rgb):
    image = make(shape, dtype)
    for bundle in (tiny_bundle, tiny_bundle_rgb):
        x = bundle_tensor(bundle, [check_image(image)])
        assert x.shape == (1, bundle.in_channels, 32, 32) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        unit = x * torch.tensor(bundle.config.std).view(-1, 1, 1) + torch.tensor(bundle.config.mean).view(-1, 1, 1)
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5  # [0, 1] before normalisation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 7), (6, 6, 3), (2, 3, 4)])
def test_constant_image_is_zero(dtype, shape):
    value = {"bool": True, "float16": -3.5, "float32": 1e30, "float64": -7e300}.get(dtype, 3)
    image = np.full(shape, value, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning at all fails
        unit = to_unit(image)
        x = image_to_tensor(image, 1, 16, [0.5], [0.25])
    assert unit.dtype == np.float32 and unit.shape == shape[:2] + (3,) * (len(shape) == 3)  # alpha dropped
    assert np.isfinite(unit).all()
    if dtype == "bool":  # booleans keep their natural range: all True is all 1
        assert (unit == 1).all()
    else:
        assert (unit == 0).all()
    if dtype != "bool":
        assert torch.equal(x, torch.full((1, 16, 16), -2.0))


def test_all_false_bool_is_zero():
    assert (to_unit(np.zeros((3, 3), bool)) == 0).all()


def test_min_max_scaling_is_exact():
    image = np.array([[10, 20], [30, 50]], dtype=np.int32)
    np.testing.assert_allclose(to_unit(image), [[0, 0.25], [0.5, 1]], atol=1e-7)
    np.testing.assert_allclose(to_unit(image, (0, 100)), [[0.1, 0.2], [0.3, 0.5]], atol=1e-7)
    np.testing.assert_allclose(to_unit(image, (20, 30)), [[0, 0], [1, 1]], atol=1e-7)  # clipped


@pytest.mark.parametrize("values", [
    [0.0, 1e-300, 5e-301],        # a tiny float64 range
    [0.0, 5e-324, 0.0],           # denormal
    [-1e308, 1e308, 0.0],         # the whole float64 range
    [-1.7e308, 1.7e308, 1e308],
])
def test_extreme_float64_ranges(values):
    unit = to_unit(np.array([values], dtype=np.float64))
    assert np.isfinite(unit).all() and unit.min() == 0 and unit.max() == 1


def test_extreme_float32_range():
    f = np.finfo(np.float32)
    unit = to_unit(np.array([[f.min, f.max, 0.0, f.tiny]], dtype=np.float32))
    np.testing.assert_allclose(unit, [[0, 1, 0.5, 0.5]], atol=1e-6)


def test_extreme_integers():
    for dtype in (np.int64, np.uint64):
        info = np.iinfo(dtype)
        unit = to_unit(np.array([[info.min, info.max]], dtype=dtype))
        np.testing.assert_allclose(unit, [[0, 1]])


def test_nan_and_inf_are_cleaned_as_documented():
    image = np.array([[np.nan, 2.0, 4.0], [np.inf, -np.inf, 3.0]], dtype=np.float32)
    assert value_range(image) == (2.0, 4.0)
    unit = to_unit(image)
    # NaN -> the finite minimum, +inf -> the maximum, -inf -> the minimum
    np.testing.assert_allclose(unit, [[0, 0, 1], [1, 0, 0.5]])
    x = image_to_tensor(image, 3, 8, [0.5] * 3, [0.25] * 3)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_no_finite_value_is_an_error(dtype, fill):
    image = np.full((5, 5), fill, dtype=dtype)
    image[0, 0] = np.nan
    with pytest.raises(ImageError) as err:
        to_unit(image)
    assert "finite" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape", [(8, 8, 2), (8, 8, 5), (8, 8, 1), (2, 8, 8, 8, 3), (8,), ()])
def test_bad_shapes_are_refused_with_the_shape(shape):
    image = np.zeros(shape, np.uint8)
    with pytest.raises(ImageError) as err:
        check_image(image)
    msg = str(err.value)
    assert str(shape) in msg and "\n" not in msg


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0, 3)])
def test_empty_images_are_refused(shape):
    with pytest.raises(ImageError) as err:
        check_image(np.zeros(shape))
    assert "empty" in str(err.value)


@pytest.mark.parametrize("bad, words", [
    (np.array([["a", "b"], ["c", "d"]]), "numbers"),
    (np.zeros((3, 3), dtype=object), "numbers"),
    (np.zeros((3, 3), dtype=np.complex64), "Complex"),
])
def test_non_numeric_images_are_refused(bad, words):
    with pytest.raises(ImageError) as err:
        check_image(bad)
    assert words in str(err.value)


def test_rgb_to_one_channel_uses_luminance():
    image = np.zeros((2, 4, 3), np.uint8)
    image[0, 1] = (255, 0, 0)
    image[0, 2] = (0, 255, 0)
    image[0, 3] = (0, 0, 255)
    image[1, :] = 255
    x = raw_tensor(image, 1)
    assert x.shape == (1, 2, 4)
    np.testing.assert_allclose(x[0, 0].numpy(), [0, 0.2125, 0.7154, 0.0721], atol=1e-6)
    np.testing.assert_allclose(x[0, 1].numpy(), 1.0, atol=1e-6)
    # the same as scikit-image's rgb2gray on the [0, 1] image
    from skimage.color import rgb2gray

    rgb = make((20, 30, 3), "uint8", seed=5)
    np.testing.assert_allclose(raw_tensor(rgb, 1)[0].numpy(), rgb2gray(to_unit(rgb)), atol=1e-5)


def test_rgb_stays_rgb_for_three_channels():
    rgb = make((6, 7, 3), "uint8", seed=2)
    x = raw_tensor(rgb, 3)
    np.testing.assert_allclose(x.numpy(), to_unit(rgb).transpose(2, 0, 1))


def test_gray_to_three_channels_repeats():
    gray = make((6, 7), "uint16", seed=3)
    x = raw_tensor(gray, 3)
    assert x.shape == (3, 6, 7)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    np.testing.assert_allclose(x[0].numpy(), to_unit(gray))


def test_alpha_is_dropped():
    rgba = make((10, 12, 4), "uint8", seed=4)
    other_alpha = rgba.copy()
    other_alpha[..., 3] = 0
    assert torch.equal(raw_tensor(rgba, 3, 16), raw_tensor(rgba[..., :3], 3, 16))
    assert torch.equal(raw_tensor(rgba, 1, 16), raw_tensor(other_alpha, 1, 16))


def test_normalisation_uses_mean_and_std():
    image = np.array([[0, 255]], np.uint8)
    x = image_to_tensor(image, 3, 0, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0], resize=False)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [-0.2, -0.8, -0.15], atol=1e-6)
    np.testing.assert_allclose(x[:, 0, 1].numpy(), [1.8, 3.2, 0.35], atol=1e-6)


def test_uint8_and_unit_float_give_the_same_tensor(tiny_bundle_rgb):
    img8 = make((50, 70, 3), "uint8", seed=6)
    img8[0, 0] = 0
    img8[0, 1] = 255
    x8 = bundle_tensor(tiny_bundle_rgb, [img8])
    for dtype in (np.float32, np.float64):
        xf = bundle_tensor(tiny_bundle_rgb, [(img8 / 255.0).astype(dtype)])
        assert torch.allclose(x8, xf, atol=1e-5)


def test_value_range_argument(tiny_bundle):
    dark = np.array([[0, 10], [20, 30]], np.uint8)
    x = bundle_tensor(tiny_bundle, [dark], vrange=(0, 255))
    unit = x * 0.25 + 0.5
    assert unit.max() < 0.2  # a dark image stays dark with a fixed range
    assert bundle_tensor(tiny_bundle, [dark]).max() > 1.9  # its own range stretches it to 1


def test_resize_is_antialiased_when_shrinking():
    stripes = np.zeros((64, 64), np.float32)
    stripes[:, ::2] = 1.0
    x = raw_tensor(stripes, 1, 16)
    # aliasing would give a pattern of 0s and 1s; antialiased it is grey (the border columns nearly so)
    np.testing.assert_allclose(x[..., 1:-1].numpy(), 0.5, atol=1e-5)
    np.testing.assert_allclose(x.numpy(), 0.5, atol=0.05)


@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
def test_resize_maps_restores_size(lead):
    maps = torch.rand(*lead, 7, 5)
    out = resize_maps(maps, (50, 30))
    assert out.shape == (*lead, 50, 30) and out.dtype == torch.float32
    assert out.min() >= maps.min() - 1e-6 and out.max() <= maps.max() + 1e-6
    same = resize_maps(maps, (7, 5))
    assert torch.equal(same, maps)
    const = resize_maps(torch.full((4, 4), 0.3, dtype=torch.float64), (9, 11))
    assert torch.allclose(const, torch.tensor(0.3))


def test_split_batch():
    gray = np.zeros((8, 9), np.uint8)
    rgb = np.zeros((8, 9, 3), np.uint8)
    assert split_batch(gray)[1] is False and len(split_batch(gray)[0]) == 1
    assert split_batch(rgb)[1] is False
    images, is_batch = split_batch(np.zeros((5, 8, 9), np.float32))
    assert is_batch and len(images) == 5 and images[0].shape == (8, 9)
    images, is_batch = split_batch(np.zeros((4, 8, 9, 4), np.float32))
    assert is_batch and len(images) == 4 and images[0].shape == (8, 9, 4)
    images, is_batch = split_batch([gray, rgb, np.zeros((3, 2))])
    assert is_batch and [im.shape for im in images] == [(8, 9), (8, 9, 3), (3, 2)]
    with pytest.raises(ImageError):
        split_batch([])
    with pytest.raises(ImageError) as err:
        split_batch(np.zeros((2, 3, 8, 9, 3)))
    assert "(2, 3, 8, 9, 3)" in str(err.value)
    with pytest.raises(ImageError) as err:
        split_batch([gray, np.zeros((8, 9, 2))])
    assert "(8, 9, 2)" in str(err.value)


def test_dask_image_is_computed():
    da = pytest.importorskip("dask.array")
    image = da.from_array(make((40, 30), "uint16"), chunks=(10, 10))
    arr = check_image(image)
    assert isinstance(arr, np.ndarray) and arr.shape == (40, 30)
    images, is_batch = split_batch(da.zeros((3, 8, 8), chunks=(1, 8, 8)))
    assert is_batch and all(isinstance(i, np.ndarray) for i in images)


def test_to_channels_shapes():
    assert to_channels(np.zeros((4, 5), np.float32), 1).shape == (1, 4, 5)
    assert to_channels(np.zeros((4, 5), np.float32), 3).shape == (3, 4, 5)
    assert to_channels(np.zeros((4, 5, 3), np.float32), 1).shape == (1, 4, 5)
    assert to_channels(np.zeros((4, 5, 3), np.float32), 3).shape == (3, 4, 5)
