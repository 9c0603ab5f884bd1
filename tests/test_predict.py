"""predict(): shapes in and out, probabilities, no autograd, devices; and a property test over any image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_gradcam as ng
from napari_gradcam.errors import GradCamError, ImageError

N_CLASSES = 3
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def img(shape, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(dtype)


def test_one_image(tiny_bundle):
    p = ng.predict(tiny_bundle, img((40, 50)))
    assert p.shape == (N_CLASSES,) and p.dtype == np.float32
    assert np.all(p >= 0) and np.isclose(p.sum(), 1, atol=1e-5)


def test_one_rgb_image_on_gray_and_rgb_models(tiny_bundle, tiny_bundle_rgb):
    for b in (tiny_bundle, tiny_bundle_rgb):
        assert ng.predict(b, img((40, 50, 3))).shape == (N_CLASSES,)
        assert ng.predict(b, img((40, 50, 4))).shape == (N_CLASSES,)


@pytest.mark.parametrize("batch", [
    lambda: [img((20, 30), 1), img((64, 64, 3), 2), img((5, 7), 3, np.float32)],
    lambda: img((5, 24, 24)),
    lambda: img((4, 24, 24, 3)),
    lambda: img((4, 24, 24, 4), dtype=np.float64),
    lambda: (img((10, 10)),),
])
def test_batches(tiny_bundle, batch):
    images = batch()
    n = len(images)
    p = ng.predict(tiny_bundle, images)
    assert p.shape == (n, N_CLASSES)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_batch_rows_match_single_predictions_and_batch_size(tiny_bundle):
    images = img((7, 30, 30))
    batch = ng.predict(tiny_bundle, images, batch_size=3)
    assert batch.shape == (7, N_CLASSES)
    for i, im in enumerate(images):
        np.testing.assert_allclose(batch[i], ng.predict(tiny_bundle, im), atol=1e-6)


def test_prediction_is_deterministic_and_matches_the_model(tiny_bundle):
    from napari_gradcam.preprocess import bundle_tensor

    image = img((33, 45))
    p1, p2 = ng.predict(tiny_bundle, image), ng.predict(tiny_bundle, image)
    assert np.array_equal(p1, p2)
    with torch.no_grad():
        expected = torch.softmax(tiny_bundle.model(bundle_tensor(tiny_bundle, [image])), 1)[0].numpy()
    np.testing.assert_allclose(p1, expected, atol=1e-6)


def test_runs_in_inference_mode_without_grad(tiny_bundle):
    seen = []

    def hook(_module, _inputs, output):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), output.requires_grad))

    handle = tiny_bundle.model.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            ng.predict(tiny_bundle, img((3, 20, 20)), batch_size=2)
    finally:
        handle.remove()
    assert seen == [(True, False, False)] * 2


def test_puts_a_training_model_in_eval_mode(tiny_bundle):
    tiny_bundle.model.train()
    try:
        ng.predict(tiny_bundle, img((20, 20)))
        assert not tiny_bundle.model.training
    finally:
        tiny_bundle.model.eval()


@pytest.mark.parametrize("bad", [[np.zeros((8, 8, 2))], np.zeros((2, 3, 8, 8, 3)), [], np.full((5, 5), np.nan),
                                 np.zeros((0, 4)), "not an image"])
def test_bad_input_is_an_image_error(tiny_bundle, bad):
    with pytest.raises(ImageError) as err:
        ng.predict(tiny_bundle, bad)
    assert "\n" not in str(err.value)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert ng.resolve_device("auto") == torch.device("cpu")
    assert ng.resolve_device(None) == torch.device("cpu")
    assert ng.resolve_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(GradCamError) as err:
            ng.resolve_device(asked)
        assert "CUDA" in str(err.value) and "\n" not in str(err.value)


def test_resolve_device_here():
    if torch.cuda.is_available():
        assert ng.resolve_device("auto").type == "cuda"
    else:
        assert ng.resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(GradCamError):
            ng.resolve_device("cuda")


def test_missing_cuda_index_and_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ng.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(GradCamError) as err:
        ng.resolve_device("cuda:3")
    assert "3" in str(err.value)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GradCamError) as err:
        ng.resolve_device("mps")
    assert "MPS" in str(err.value)


def test_unknown_device_name_is_a_clear_error():
    with pytest.raises(GradCamError) as err:
        ng.resolve_device("gpu please")
    assert "gpu please" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda(tiny_bundle):
    import copy

    b = copy.deepcopy(tiny_bundle).to("cuda")
    image = img((40, 40))
    np.testing.assert_allclose(ng.predict(b, image), ng.predict(tiny_bundle, image), atol=1e-4)


# ----------------------------------------------------------------------------- property test
DTYPES = [np.bool_, np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]


@st.composite
def images(draw):
    h = draw(st.integers(1, 80))
    w = draw(st.integers(1, 80))
    channels = draw(st.sampled_from([(), (3,), (4,)]))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if np.issubdtype(dtype, np.floating):  # every float, NaN and infinities included
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    else:
        elements = None
    return draw(hnp.arrays(dtype, (h, w, *channels), elements=elements))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(image=images())
def test_predict_any_image(tiny_bundle, image):
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # numpy must not even warn
        try:
            p = ng.predict(tiny_bundle, image)
        except ImageError as e:
            colour = image[..., :3] if image.ndim == 3 else image  # alpha is dropped, so it does not count
            assert not np.isfinite(colour.astype(np.float64)).any(), f"refused an image with finite values: {e}"
            return
    assert p.shape == (N_CLASSES,)
    assert np.isfinite(p).all() and np.isclose(p.sum(), 1, atol=1e-5)
