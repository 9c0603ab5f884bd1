"""Hostile and odd images through predict, explain, tiled_heatmaps and feature_maps (issue 6, part 2).

Every case ends in a result of the image's own shape, finite and in [0, 1], or in an ImageError whose one
sentence names the problem; and afterwards the model is as before: no hooks, no ``.grad``, grad mode unchanged.
Warnings are errors here: odd values must be handled, not warned about.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_gradcam as ng
from napari_gradcam.errors import GradCamError, ImageError
from napari_gradcam.engine import explain, feature_maps, tiled_heatmaps

da = pytest.importorskip("dask.array")

# no RuntimeWarning (overflow, invalid value, casting complex) nor UserWarning (torch, dask) anywhere here
pytestmark = [pytest.mark.usefixtures("torch_one_thread", "model_left_clean"),
              pytest.mark.filterwarnings("error::RuntimeWarning"), pytest.mark.filterwarnings("error::UserWarning")]

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32",
          "float64"]
METHODS = ["cam", "gradcam", "gradcam++"]
N_CLASSES = 3
HUGE = (100_000, 100_000)


# ----------------------------------------------------------------------------- helpers
def _clean(model: torch.nn.Module) -> bool:
    """No hooks anywhere and no parameter gradients."""
    hooks = any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    return not hooks and all(p.grad is None for p in model.parameters())


@pytest.fixture
def model_left_clean(tiny_bundle, tiny_bundle_rgb):
    """After every test, success or clear error alike: the shared models are untouched."""
    grad_mode = torch.is_grad_enabled()
    yield
    assert torch.is_grad_enabled() == grad_mode
    for b in (tiny_bundle, tiny_bundle_rgb):
        assert _clean(b.model) and not b.model.training


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and msg.isprintable(), f"not one clear line: {msg!r}"
    return msg


def make(shape, dtype, seed=0) -> np.ndarray:
    """A random image spanning much of ``dtype``'s range."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == bool:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def check_map(data, shape) -> None:
    data = np.asarray(data)
    assert data.shape == tuple(shape) and data.dtype == np.float32
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1


def run_all(bundle, image, fullconv=True) -> dict:
    """Every entry point on one image; checks the shapes and ranges, returns the results."""
    H, W = np.asarray(image).shape[:2]
    p = ng.predict(bundle, image)
    assert p.shape == (N_CLASSES,) and np.isfinite(p).all() and p.sum() == pytest.approx(1, abs=1e-5)
    out = {"predict": p}
    for method in METHODS:
        h = explain(bundle, image, method)
        check_map(h.data, (H, W))
        assert np.isfinite(h.raw).all() and 0 <= h.score <= 1
        out[method] = h
    t = tiled_heatmaps(bundle, image, tile=32, overlap=0.5)
    check_map(t.heatmaps, (N_CLASSES, H, W))
    assert sum(t.breakdown.values()) == pytest.approx(1)
    out["tiles"] = t
    if fullconv:
        fc = tiled_heatmaps(bundle, image, tile=32, mode="fullconv")
        check_map(fc.heatmaps, (N_CLASSES, H, W))
        out["fullconv"] = fc
    f = feature_maps(bundle, image, n=4)
    assert f.maps.shape[0] == 4 and np.isfinite(f.maps).all()
    return out


def refused_everywhere(bundle, image, *words) -> list[str]:
    """predict, explain, tiled (both modes) and feature_maps all refuse ``image`` with ImageError naming ``words``."""
    calls = [lambda: ng.predict(bundle, image), lambda: explain(bundle, image, "gradcam"),
             lambda: explain(bundle, image, "cam"), lambda: tiled_heatmaps(bundle, image, tile=32),
             lambda: tiled_heatmaps(bundle, image, tile=32, mode="fullconv"), lambda: feature_maps(bundle, image)]
    messages = []
    for call in calls:
        with pytest.raises(ImageError) as err:
            call()
        msg = one_line(err)
        for w in words:
            assert w in msg, f"{w!r} not in {msg!r}"
        messages.append(msg)
    return messages


# ----------------------------------------------------------------------------- every dtype
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_napari_dtype(tiny_bundle, tiny_bundle_rgb, dtype):
    run_all(tiny_bundle, make((23, 37), dtype))
    run_all(tiny_bundle_rgb, make((23, 37, 3), dtype, seed=1), fullconv=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_does_not_change_the_answer(tiny_bundle, dtype):
    """The same picture in any dtype gives the same probabilities and (nearly) the same heatmap."""
    base = np.random.default_rng(3).integers(0, 2, (40, 40)).astype(np.uint8)  # 0/1: exact in every dtype
    ref = explain(tiny_bundle, base, "gradcam")
    h = explain(tiny_bundle, base.astype(dtype), "gradcam")
    np.testing.assert_allclose(h.probabilities, ref.probabilities, atol=1e-5)
    np.testing.assert_allclose(h.data, ref.data, atol=1e-4)


# ----------------------------------------------------------------------------- tiny, thin, small
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (5, 7), (31, 31), (1, 1, 3), (2, 3, 4), (1, 300),
                                   (300, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_tiny_thin_and_smaller_than_the_input(tiny_bundle, shape):
    out = run_all(tiny_bundle, make(shape, "uint8"))
    assert out["tiles"].tiles >= 1


# ----------------------------------------------------------------------------- channels
@pytest.mark.parametrize("shape", [(64, 64, 2), (40, 50, 5), (40, 50, 1), (30, 30, 8)])
def test_unsupported_channel_counts_are_refused_with_the_shape(tiny_bundle, shape):
    image = make(shape, "uint16")
    refused_everywhere(tiny_bundle, image, str(shape))
    with pytest.raises(ImageError) as err:  # not read as a batch of 64 slivers of 64 x 2 pixels
        ng.predict(tiny_bundle, image)
    assert "channel" in one_line(err)


def test_a_batch_of_thin_images_still_works_as_a_list(tiny_bundle):
    slivers = make((4, 64, 2), "uint8")
    assert ng.predict(tiny_bundle, list(slivers)).shape == (4, N_CLASSES)
    assert ng.predict(tiny_bundle, make((6, 20, 30), "uint8")).shape == (6, N_CLASSES)  # (N, H, W) stays a batch


# ----------------------------------------------------------------------------- NaN, inf, constant
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_partial_nan_and_inf_are_cleaned(tiny_bundle, dtype):
    image = make((45, 50), dtype)
    image[3:20, 5:9] = np.nan
    image[30, 30] = np.inf
    image[31, 31] = -np.inf
    out = run_all(tiny_bundle, image)
    # as documented: NaN -> the finite minimum, +inf -> the maximum, -inf -> the minimum
    finite = image[np.isfinite(image)]
    cleaned = np.nan_to_num(image, nan=finite.min(), posinf=finite.max(), neginf=finite.min())
    np.testing.assert_allclose(ng.predict(tiny_bundle, cleaned), out["predict"], atol=1e-5)
    np.testing.assert_allclose(explain(tiny_bundle, cleaned, "gradcam").data, out["gradcam"].data, atol=1e-4)


def test_partial_nan_in_a_lazy_image_is_cleaned_as_in_numpy(tiny_bundle):
    image = make((90, 70), "float32")
    image[10:30, 10:30] = np.nan
    image[50, 5] = np.inf
    ref = tiled_heatmaps(tiny_bundle, image, tile=32)
    lazy = tiled_heatmaps(tiny_bundle, da.from_array(image, chunks=40), tile=32, chunk=48)
    assert lazy.lazy
    np.testing.assert_allclose(lazy.heatmaps.compute(), ref.heatmaps, atol=1e-5)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, "mixed"])
def test_no_finite_value_is_refused(tiny_bundle, fill):
    image = np.full((30, 30), np.nan if fill == "mixed" else fill, np.float32)
    if fill == "mixed":
        image[::2] = np.inf
    refused_everywhere(tiny_bundle, image, "finite")
    with pytest.raises(ImageError) as err:
        tiled_heatmaps(tiny_bundle, da.from_array(image, chunks=10), tile=16, chunk=16)
    assert "finite" in one_line(err)


def test_finite_alpha_alone_is_not_enough(tiny_bundle_rgb):
    """Alpha is dropped: an RGBA image whose colours are all NaN has nothing to classify."""
    image = np.full((20, 20, 4), np.nan, np.float32)
    image[..., 3] = 1.0
    refused_everywhere(tiny_bundle_rgb, image, "finite")


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_images_give_a_uniform_answer_without_warnings(tiny_bundle, dtype):
    value = {"bool": False, "float16": -3.5, "float32": 1e30, "float64": -7e300, "int8": -128}.get(dtype, 7)
    image = np.full((48, 40), value, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning at all fails
        out = run_all(tiny_bundle, image)
    # every constant image is the same network input (all 0 after scaling): the same answer
    np.testing.assert_allclose(out["predict"], ng.predict(tiny_bundle, np.zeros((48, 40), np.uint8)), atol=1e-6)
    # identical tiles: the blended class probabilities are uniform over the image
    probs = out["tiles"].probability_maps
    np.testing.assert_allclose(probs, probs[:, :1, :1] * np.ones_like(probs), atol=1e-5)


# ----------------------------------------------------------------------------- stacks and other layers' data
@pytest.mark.parametrize("shape", [(5, 40, 40), (2, 5, 40, 40), (5, 40, 40, 3), (2, 3, 40, 40, 3)])
def test_stacks_are_refused_where_one_image_is_expected(tiny_bundle, shape):
    image = np.zeros(shape, np.uint8)
    for call in (lambda: explain(tiny_bundle, image), lambda: feature_maps(tiny_bundle, image),
                 lambda: tiled_heatmaps(tiny_bundle, image, tile=32)):
        with pytest.raises(ImageError) as err:
            call()
        msg = one_line(err)
        assert str(shape) in msg and "slice" in msg


def test_channels_first_rgb_gets_a_hint(tiny_bundle):
    with pytest.raises(ImageError) as err:
        explain(tiny_bundle, np.zeros((3, 40, 50), np.uint8))
    assert "(3, 40, 50)" in one_line(err) and "channel axis last" in str(err.value)


def test_predict_reads_3d_and_4d_stacks_as_batches_or_refuses(tiny_bundle):
    assert ng.predict(tiny_bundle, np.zeros((5, 40, 40), np.uint8)).shape == (5, N_CLASSES)
    assert ng.predict(tiny_bundle, np.zeros((2, 40, 40, 3), np.uint8)).shape == (2, N_CLASSES)
    for shape in [(2, 5, 40, 40), (2, 3, 40, 40, 3), (40,), ()]:
        with pytest.raises(ImageError) as err:
            ng.predict(tiny_bundle, np.zeros(shape, np.uint8))
        assert str(shape) in one_line(err)


@pytest.mark.parametrize("bad, words", [
    (np.array([["a", "b"], ["c", "d"]]), "numbers"),
    (np.zeros((20, 20), dtype=object), "numbers"),
    (np.zeros((20, 20), dtype=np.complex64), "Complex"),
    (np.zeros((20, 20), dtype="datetime64[s]"), "numbers"),
    (np.zeros((20, 20), dtype="V4"), "numbers"),
], ids=["str", "object", "complex", "datetime", "void"])
def test_non_numeric_arrays_are_refused(tiny_bundle, bad, words):
    refused_everywhere(tiny_bundle, bad, words)
    with pytest.raises(ImageError) as err:  # a lazy one too, from its dtype alone
        tiled_heatmaps(tiny_bundle, da.from_array(bad, chunks=10), tile=16)
    assert words in one_line(err)


def test_ragged_and_non_array_input_is_refused(tiny_bundle):
    for bad in ([[1, 2, 3], [4, 5]], None, "an image", {"data": 1}):
        for call in (lambda: ng.predict(tiny_bundle, bad), lambda: explain(tiny_bundle, bad),
                     lambda: tiled_heatmaps(tiny_bundle, bad)):
            with pytest.raises(ImageError) as err:
                call()
            one_line(err)


# ----------------------------------------------------------------------------- huge images
def _zero_stride(shape, dtype=np.uint8) -> np.ndarray:
    """An array of any size that takes no memory (every pixel is the same byte)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


def _poisoned(shape, chunks, allowed=lambda loc: False, seen=None):
    """A lazy uint8 image whose blocks raise when read, except those ``allowed(block location)``."""
    def block(b, block_info=None):
        loc = block_info[None]["chunk-location"]
        if seen is not None:
            seen.append(loc)
        if not allowed(loc):
            raise AssertionError(f"block {loc} was read")
        return b

    return da.zeros(shape, np.uint8, chunks=chunks).map_blocks(block, dtype=np.uint8)


def test_huge_in_memory_view_is_refused_without_allocating(tiny_bundle):
    big = _zero_stride(HUGE)
    tracemalloc.start()
    try:
        for call in (lambda: ng.predict(tiny_bundle, big), lambda: explain(tiny_bundle, big, "gradcam"),
                     lambda: explain(tiny_bundle, big, "cam"), lambda: feature_maps(tiny_bundle, big),
                     lambda: ng.predict(tiny_bundle, [big]), lambda: ng.predict(tiny_bundle, big[None])):
            with pytest.raises(ImageError) as err:
                call()
            assert "too large" in one_line(err) and "100000" in str(err.value)
        with pytest.raises(GradCamError) as err:
            tiled_heatmaps(tiny_bundle, big, tile=256, mode="fullconv")
        assert "too large" in one_line(err) and "tiles" in str(err.value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated to refuse an image"


def test_huge_lazy_image_is_refused_without_reading_it(tiny_bundle):
    lazy = _poisoned(HUGE, 4096)
    for call in (lambda: ng.predict(tiny_bundle, lazy), lambda: explain(tiny_bundle, lazy),
                 lambda: feature_maps(tiny_bundle, lazy), lambda: explain(tiny_bundle, lazy[None, :10, :10]),
                 lambda: tiled_heatmaps(tiny_bundle, lazy, tile=256, mode="fullconv", value_range_=(0, 1))):
        with pytest.raises(GradCamError) as err:
            call()
        one_line(err)


def test_huge_lazy_image_gives_lazy_heatmaps(tiny_bundle):
    seen = []
    lazy = _poisoned(HUGE, 4096, allowed=lambda loc: loc[0] <= 1 and loc[1] <= 1, seen=seen)
    t = tiled_heatmaps(tiny_bundle, lazy, tile=256, overlap=0.5, value_range_=(0, 255))
    assert t.lazy and t.heatmaps.shape == (N_CLASSES, *HUGE) and t.heatmaps.dtype == np.float32
    assert not seen  # nothing read yet
    corner = t.heatmaps[:, :300, :300].compute()
    check_map(corner, (N_CLASSES, 300, 300))
    # the corner's output chunk and the tile groups reaching into it: at most 4 input blocks of 625
    assert (0, 0) in set(seen) <= {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_huge_in_memory_view_gives_lazy_heatmaps(tiny_bundle):
    big = _zero_stride(HUGE)
    tracemalloc.start()
    try:
        t = tiled_heatmaps(tiny_bundle, big, tile=256, value_range_=(0, 255))
        assert t.lazy and t.heatmaps.shape == (N_CLASSES, *HUGE)
        check_map(t.heatmaps[:, -300:, -300:].compute(), (N_CLASSES, 300, 300))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 500e6, f"{peak / 1e6:.0f} MB"
    with pytest.raises(GradCamError) as err:  # top-k needs the whole image: refused, not computed
        tiled_heatmaps(tiny_bundle, big, tile=256, classes=2)
    assert "top-k" in one_line(err)


def test_lazy_value_range_is_one_streaming_pass(tiny_bundle):
    image = make((300, 200), "uint16")
    image[0, 0] = 0
    ref = tiled_heatmaps(tiny_bundle, image, tile=64)
    lazy = tiled_heatmaps(tiny_bundle, da.from_array(image, chunks=(70, 90)), tile=64, chunk=128)
    np.testing.assert_allclose(lazy.heatmaps.compute(), ref.heatmaps, atol=1e-5)
    flags = da.from_array(np.eye(150, dtype=bool), chunks=50)  # booleans scale 0..1 in both paths
    np.testing.assert_allclose(tiled_heatmaps(tiny_bundle, flags, tile=32, chunk=64).heatmaps.compute(),
                               tiled_heatmaps(tiny_bundle, np.eye(150, dtype=bool), tile=32).heatmaps, atol=1e-5)


def test_rgba_lazy_and_zarr_images_match_numpy(tiny_bundle_rgb, tmp_path, monkeypatch):
    """Any chunking of the channel axis, a zarr array, and the automatic lazy path give the numpy result."""
    zarr = pytest.importorskip("zarr")
    from napari_gradcam.engine.tiling import run as tiling

    image = make((150, 130, 4), "uint8", seed=4)
    ref = tiled_heatmaps(tiny_bundle_rgb, image, tile=32)
    for chunks in [(60, 60, 4), (50, 70, 1)]:
        lazy = tiled_heatmaps(tiny_bundle_rgb, da.from_array(image, chunks=chunks), tile=32, chunk=64)
        np.testing.assert_allclose(lazy.heatmaps.compute(), ref.heatmaps, atol=1e-5)
    z = zarr.open(str(tmp_path / "image.zarr"), mode="w", shape=image.shape, chunks=(64, 64, 4), dtype=image.dtype)
    z[:] = image
    small = tiled_heatmaps(tiny_bundle_rgb, z, tile=32)
    assert not small.lazy
    np.testing.assert_allclose(small.heatmaps, ref.heatmaps, atol=1e-6)
    monkeypatch.setattr(tiling, "MAX_PIXELS", 1000)  # as if the image did not fit in memory
    for source in (z, image):
        big = tiled_heatmaps(tiny_bundle_rgb, source, tile=32, chunk=64)
        assert big.lazy
        np.testing.assert_allclose(big.heatmaps.compute(), ref.heatmaps, atol=1e-5)


# ----------------------------------------------------------------------------- bad arguments
def test_absurd_tiling_arguments_are_refused(tiny_bundle):
    image = make((40, 40), "uint8")
    for kwargs, word in [({"tile": 4}, "Tiles"), ({"tile": 10**6}, "Tiles"), ({"overlap": float("nan")}, "Overlap"),
                         ({"batch_size": 0}, "batch_size"), ({"value_range_": (0, np.inf)}, "value_range_"),
                         ({"value_range_": (5, 5)}, "value_range_"),
                         ({"mode": "magic"}, "mode")]:
        with pytest.raises(GradCamError) as err:
            tiled_heatmaps(tiny_bundle, image, **kwargs)
        assert word in one_line(err)
    with pytest.raises(GradCamError) as err:
        ng.predict(tiny_bundle, image, batch_size=0)
    assert "batch_size" in one_line(err)


# ----------------------------------------------------------------------------- property tests
HYP_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
              np.float16, np.float32, np.float64]


@st.composite
def images(draw):
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    channels = draw(st.sampled_from([(), (3,), (4,)]))
    dtype = np.dtype(draw(st.sampled_from(HYP_DTYPES)))
    elements = st.floats(width=dtype.itemsize * 8) if dtype.kind == "f" else None  # NaN and infinities included
    return draw(hnp.arrays(dtype, (h, w, *channels), elements=elements))


def _has_finite(image) -> bool:
    """Any finite value in the pixels the model sees (alpha is dropped)."""
    rgb = image[..., :3] if image.ndim == 3 else image
    with np.errstate(all="ignore"):
        return bool(np.isfinite(rgb.astype(np.float64)).any())


HYP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@HYP
@given(image=images(), method=st.sampled_from(METHODS), rgb=st.booleans())
def test_explain_any_image(tiny_bundle, tiny_bundle_rgb, image, method, rgb):
    bundle = tiny_bundle_rgb if rgb else tiny_bundle
    try:
        h = explain(bundle, image, method)
    except ImageError as e:
        assert not _has_finite(image), f"refused an image with finite values: {e}"
        return
    check_map(h.data, image.shape[:2])
    assert 0 <= h.score <= 1 and np.isfinite(h.probabilities).all()
    assert _clean(bundle.model)


@HYP
@given(image=images(), method=st.sampled_from(METHODS), mode=st.sampled_from(["tiles", "fullconv"]),
       overlap=st.sampled_from([0.0, 0.5, 0.75]))
def test_tiled_heatmaps_any_image(tiny_bundle, image, method, mode, overlap):
    if mode == "fullconv":
        method = "cam"
    try:
        t = tiled_heatmaps(tiny_bundle, image, tile=32, overlap=overlap, method=method, mode=mode)
    except ImageError as e:
        assert not _has_finite(image), f"refused an image with finite values: {e}"
        return
    check_map(t.heatmaps, (N_CLASSES, *image.shape[:2]))
    assert np.isfinite(t.probability_maps).all() and sum(t.breakdown.values()) == pytest.approx(1)
    assert _clean(tiny_bundle.model)
