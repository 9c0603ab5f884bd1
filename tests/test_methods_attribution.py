"""Pixel attributions: equal to captum's own results, signed where they should be, at the image's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam.engine.methods import attribution as A
from napari_gradcam.engine import explain, get_method
from napari_gradcam.errors import GradCamError
from napari_gradcam.preprocess import bundle_tensor, resize_maps

captum = pytest.importorskip("captum")
from captum.attr import (  # noqa: E402
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

SIZE = 48
METHODS = ["saliency", "integrated-gradients", "smoothgrad", "occlusion", "guided-backprop", "guided-gradcam"]
SIGNED = {"integrated-gradients", "occlusion", "guided-backprop", "guided-gradcam"}


@pytest.fixture(scope="module", params=[("resnet18", 3), ("simple_cnn", 1)], ids=["resnet18", "simple_cnn"])
def bundle(request):
    arch, channels = request.param
    torch.manual_seed(0)
    return ng.build_model(arch, ["a", "b", "c"], in_channels=channels, input_size=SIZE)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (np.exp(-((yy - 15) ** 2 + (xx - 30) ** 2) / 40.0) + 0.3 * rng.random((SIZE, SIZE))).astype(np.float32)


def _captum(bundle, x, method: str, target: int) -> torch.Tensor:
    """captum's attribution with the settings documented in engine.attribution, reduced over channels."""
    m = bundle.model
    c = x.shape[1]
    black = A.black_baseline(bundle, x)
    batch = A._internal_batch(x)
    if method == "saliency":
        return Saliency(m).attribute(x, target=target).amax(1)
    if method == "integrated-gradients":
        return IntegratedGradients(m).attribute(x, baselines=black, target=target, n_steps=A.IG_STEPS,
                                                internal_batch_size=batch).sum(1)
    if method == "smoothgrad":
        torch.manual_seed(A.SMOOTHGRAD_SEED)
        stdev = float(A.SMOOTHGRAD_NOISE * (x.max() - x.min()))
        return NoiseTunnel(Saliency(m)).attribute(x, nt_type="smoothgrad", nt_samples=A.SMOOTHGRAD_SAMPLES,
                                                  stdevs=stdev, nt_samples_batch_size=batch, target=target).amax(1)
    if method == "occlusion":
        w, s = A.occlusion_window(x.shape[-1])
        return Occlusion(m).attribute(x, sliding_window_shapes=(c, w, w), strides=(c, s, s), baselines=black,
                                      target=target, perturbations_per_eval=batch).mean(1)
    if method == "guided-backprop":
        return GuidedBackprop(m).attribute(x, target=target).sum(1)
    return GuidedGradCam(m, m.get_submodule(bundle.target_layer)).attribute(x, target=target).sum(1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("method", METHODS)
def test_equals_captum(bundle, image, method):
    import warnings

    x = bundle_tensor(bundle, [image])
    bundle.model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for target in (None, 2):
            h = explain(bundle, image, method, target=target)
            want = _captum(bundle, x, method, h.target_index)[0].detach()
            assert h.raw.shape == (SIZE, SIZE)
            assert _rel(torch.from_numpy(h.raw), want) < 1e-5, (method, target)
            if target is None:
                assert h.target_index == int(ng.predict(bundle, image).argmax())
    assert all(p.grad is None for p in bundle.model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in bundle.model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_signed_maps_keep_their_sign_at_the_image_size(bundle, image, method):
    big = np.kron(image, np.ones((2, 3), np.float32))[:90, :130]  # another size than the network input
    h = explain(bundle, big, method, target=1)
    assert h.data.shape == big.shape and h.data.dtype == np.float32
    assert h.signed == (method in SIGNED) == get_method(method).signed
    want = resize_maps(torch.from_numpy(h.raw)[None], big.shape)[0].numpy()
    if h.signed:  # scaled by the largest |value| into [-1, 1], never clipped at 0
        want = want / np.abs(h.raw).max()
        assert h.data.min() < 0 < h.data.max() and np.abs(h.data).max() <= 1
        assert h.max == pytest.approx(float(np.abs(h.raw).max()))
    else:
        assert h.raw.min() >= 0 and 0 <= h.data.min() and h.data.max() <= 1
        want = want / h.raw.max()
    np.testing.assert_allclose(h.data, want, atol=1e-5)
    assert h.layer == ("input" if method != "guided-gradcam" else bundle.target_layer)


def test_integrated_gradients_completeness(bundle, image):
    """IG sums to the score difference between the image and the black baseline (Sundararajan et al.)."""
    x = bundle_tensor(bundle, [image])
    out = A.attribution_maps(bundle, x, [0], "integrated-gradients")
    with torch.inference_mode():
        gap = float(bundle.model(x)[0, 0] - bundle.model(A.black_baseline(bundle, x))[0, 0])
    assert float(out.maps.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3 * abs(gap) + 1e-4)
    torch.testing.assert_close(out.logits, bundle.model(x).detach().float())


def test_shifts_refused_and_many_targets(bundle, image):
    with pytest.raises(GradCamError, match="per input pixel"):
        explain(bundle, image, "saliency", shifts=2)
    maps = explain(bundle, image, "guided-backprop", target="all")
    assert [m.target for m in maps] == ["a", "b", "c"]
    one = explain(bundle, image, "guided-backprop", target="c")
    np.testing.assert_allclose(maps[2].raw, one.raw, rtol=1e-5, atol=1e-7)
    # grad mode as it was, with or without gradients enabled around the call
    with torch.no_grad():
        explain(bundle, image, "saliency")
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
