"""Score-CAM and Ablation-CAM against pytorch-grad-cam, and their fast paths against the plain ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam.engine import explain
from napari_gradcam.engine.methods.perturbation import _forward, ablated_scores, layer_output, masked_scores
from napari_gradcam.errors import LayerError
from napari_gradcam.preprocess import bundle_tensor

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

SIZE = 64
CASES = [("resnet18", "layer4"), ("vgg16", "features.14")]  # last block; a mid-level conv followed by an in-place ReLU


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def _without_inplace(model):
    """The reference runs on a copy whose ReLUs are not in place (pytorch-grad-cam keeps a tensor they overwrite)."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return ref


def _case(arch: str, layer: str):
    torch.manual_seed(0)
    bundle = ng.build_model(arch, ["a", "b", "c"], in_channels=3, input_size=SIZE)
    img = np.random.default_rng(3).random((SIZE, SIZE, 3)).astype(np.float32)
    return bundle, layer, img


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    return _case(*request.param)


@pytest.mark.parametrize("method,cls", [("scorecam", "ScoreCAM"), ("ablationcam", "AblationCAM")])
def test_agrees_with_pytorch_grad_cam(case, method, cls):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    bundle, layer, img = case
    x = bundle_tensor(bundle, [img])
    ref_model = _without_inplace(bundle.model)
    ours = explain(bundle, img, method, target=1, layer=layer)
    with getattr(pgc, cls)(model=ref_model, target_layers=[ref_model.get_submodule(layer)]) as ref:
        ref.batch_size = 64
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(1)])[0]
    assert ours.data.shape == (SIZE, SIZE) and ours.data.max() > 0
    assert np.corrcoef(ours.data.ravel(), theirs.ravel())[0, 1] > 0.99
    assert all(p.grad is None for p in bundle.model.parameters()) and _no_hooks(bundle.model)


def test_ablation_tail_equals_whole_passes(case, monkeypatch):
    """The layers after the target, run on the cached activation, give the logits of whole passes."""
    from napari_gradcam.engine.methods.perturbation import model_cut as split

    bundle, layer, img = case
    x = bundle_tensor(bundle, [img])
    logits, act = _forward(bundle.model, x, layer)
    fast, how = ablated_scores(bundle.model, x, layer, act, logits[0])
    assert how == "tail" and fast.shape == (act.shape[1], 3)
    if bundle.architecture == "resnet18":  # every channel by whole passes too (slow for vgg16)
        monkeypatch.setattr(split, "split_after", lambda *a: None)
        slow, how = ablated_scores(bundle.model, x, layer, act, logits[0])
        assert how == "full"
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4 * float(slow.abs().max()))
    # channel k zeroed by hand through the whole model
    k = 5
    def zero_k(out):
        out = out.clone()
        out[:, k] = 0
        return out
    with torch.inference_mode(), layer_output(bundle.model, layer, replace=zero_k):
        want = bundle.model(x)[0]
    torch.testing.assert_close(fast[k], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


class _Branchy(torch.nn.Module):
    """A model torch.fx cannot trace (control flow on a tensor's value): Ablation-CAM runs whole passes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        a = self.relu(self.conv(x))
        if a.sum() > -1:  # always true, but data-dependent for torch.fx
            a = a * 1.0
        return self.head(a.mean(dim=(2, 3)))


def test_untraceable_model_falls_back_to_whole_passes():
    torch.manual_seed(0)
    model = _Branchy().eval()
    bundle = ng.wrap_model(model, ["a", "b"], input_size=16, in_channels=1)
    x = torch.randn(1, 1, 16, 16)
    logits, act = _forward(model, x, "conv")
    scores, how = ablated_scores(model, x, "conv", act, logits[0])
    assert how == "full"
    # the head is linear in the pooled ReLU'd features: zeroing channel k removes W[:, k] * mean(relu(A_k))
    pooled = torch.relu(act[0]).mean(dim=(1, 2))
    want = logits[0][None] - pooled[:, None] * model.head.weight.T
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
    h = explain(bundle, np.random.default_rng(0).random((16, 16)), "ablationcam", layer="conv")
    assert h.data.shape == (16, 16) and _no_hooks(model)


def test_score_cam_on_a_model_with_a_buffer_channels_last_cannot_take():
    """A 5D buffer (timm's Swin has attention masks of other ranks) makes ``.to(channels_last)`` raise: the
    scoring copy keeps its layout and Score-CAM gives the plain float32 answer."""
    from napari_gradcam.engine.methods.perturbation.model_cut import inference_copy

    torch.manual_seed(0)
    model = _Branchy().eval()
    model.register_buffer("mask", torch.zeros(1, 2, 3, 4, 5))
    assert inference_copy(model).mask.shape == (1, 2, 3, 4, 5)
    bundle = ng.wrap_model(model, ["a", "b"], input_size=16, in_channels=1)
    img = np.random.default_rng(1).random((16, 16))
    auto = explain(bundle, img, "scorecam", layer="conv")
    plain = explain(bundle, img, "scorecam", layer="conv", precision="float32")
    np.testing.assert_allclose(auto.data, plain.data, atol=1 / 256)
    assert auto.data.max() > 0 and _no_hooks(model)


def test_score_cam_scores_and_constant_channels():
    """Masked-input logits equal a plain loop over channels; constant channels (dead ReLUs) share one pass."""
    torch.manual_seed(0)
    bundle = ng.build_model("simple_cnn", ["a", "b", "c"], in_channels=1, input_size=32)
    model = bundle.model.eval()
    x = torch.randn(1, 1, 32, 32)
    logits, act = _forward(model, x, "features")
    act = act[0].clone()
    act[:2] = 0.0  # dead channels: all-zero masks
    act[2] = 0.7  # a constant channel carries no place either (upsampling it would only give rounding noise)
    scores = masked_scores(model, x, act, logits[0])
    up = torch.nn.functional.interpolate(act[3:][None], size=(32, 32), mode="bilinear", align_corners=True)[0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    masks = (up - lo) / (hi - lo + 1e-8)
    with torch.inference_mode():
        want = torch.cat([model(x * m[None, None]) for m in masks])
        blank = model(torch.zeros_like(x))[0]
    torch.testing.assert_close(scores[3:], want, rtol=1e-4, atol=1e-5)
    for k in range(3):
        torch.testing.assert_close(scores[k], blank, rtol=1e-4, atol=1e-5)


def test_all_targets_and_bookkeeping():
    bundle, layer, img = _case(*CASES[0])
    for method in ("scorecam", "ablationcam"):
        maps = explain(bundle, img, method, target="all", layer=layer)
        assert [m.target for m in maps] == ["a", "b", "c"]
        one = explain(bundle, img, method, target="b", layer=layer)
        np.testing.assert_allclose(maps[1].data, one.data, atol=1e-5)
        with torch.set_grad_enabled(False):
            explain(bundle, img, method, target=0, layer=layer)
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
        with pytest.raises(LayerError):
            explain(bundle, img, method, layer="fc")  # not a feature map
        assert _no_hooks(bundle.model) and all(p.grad is None for p in bundle.model.parameters())


# ----------------------------------------------------------------------------- bfloat16 screening (engine/methods/perturbation/scorecam.py)
def _peak_scaled(m):
    return m / max(float(m.max()), 1e-30)


@pytest.mark.parametrize("logit_scale", [1.0, 40.0])
def test_screened_score_cam_is_within_its_tolerance_of_float32(logit_scale):
    """bfloat16 screening (forced, whatever this CPU has) + float32 where it matters gives the float32 map
    within the tolerance; with logits scaled up (a peaked softmax, large bfloat16 errors) the channels of
    largest weight are recomputed, without which the maps would differ far more."""
    from napari_gradcam.engine.methods.perturbation import scorecam as screen

    bundle, layer, img = _case("resnet18", "layer4")
    with torch.no_grad():
        bundle.model.fc.weight.mul_(logit_scale)
    exact = explain(bundle, img, "scorecam", target=1, layer=layer, precision="float32")
    counted = []
    refine = screen.refine
    try:
        screen.refine = lambda *a, **k: counted.append(refine(*a, **k)) or counted[-1]
        fast = explain(bundle, img, "scorecam", target=1, layer=layer, precision="bfloat16")
    finally:
        screen.refine = refine
    x = bundle_tensor(bundle, [img])
    logits, act = _forward(bundle.model, x, layer)
    raw = {p: masked_scores(bundle.model, x, act[0], logits[0], [1], p) for p in ("float32", "bfloat16")}
    maps = {p: _peak_scaled(torch.relu(torch.einsum("k,khw->hw", torch.softmax(s[:, 1], 0), act[0])))
            for p, s in raw.items()}
    assert (maps["bfloat16"] - maps["float32"]).abs().max() <= screen.TOLERANCE  # without refining: 0.0064 at x40
    np.testing.assert_allclose(fast.data, exact.data, atol=4 * screen.TOLERANCE)  # after resizing to the image
    assert counted and 0 < counted[0][1] <= act.shape[1]
    if logit_scale > 1:
        assert counted[0][1] > 16  # more than the error sample: the heavy channels were recomputed


def test_refine_recomputes_until_the_estimated_error_is_small():
    """refine() on synthetic scores: recomputed rows are exact, a zero tolerance recomputes every channel,
    the estimate falls with every channel recomputed, and the bias common to all channels is removed."""
    from napari_gradcam.engine.methods.perturbation.scorecam import map_error, refine

    g = torch.Generator().manual_seed(1)
    k, n = 96, 3
    act = torch.rand(k, 5, 5, generator=g)
    exact_scores = 4 * torch.randn(k, n, generator=g)
    noisy = exact_scores + 0.3 + 0.05 * torch.randn(k, n, generator=g)  # a common shift + rounding noise
    none_exact = torch.zeros(k, dtype=torch.bool)
    calls = []

    def recompute(idx):
        calls.append(len(idx))
        return exact_scores[idx]

    out, done = refine(noisy, none_exact, act, [2], recompute, step=8, tolerance=0.0)
    assert done == k and sum(calls) == k
    torch.testing.assert_close(out, exact_scores)
    calls.clear()
    out, done = refine(noisy, none_exact, act, [2], recompute, step=8)
    assert 8 <= done < k and sum(calls) == done
    w_true = torch.softmax(exact_scores[:, 2], 0)
    w_out = torch.softmax(out[:, 2], 0)
    w_raw = torch.softmax(torch.cat([exact_scores[:8, 2], noisy[8:, 2]]), 0)  # recomputed rows, no shift removed
    m = lambda w: torch.einsum("k,khw->hw", w, act)  # noqa: E731
    assert (m(w_out) - m(w_true)).abs().max() < (m(w_raw) - m(w_true)).abs().max()
    pending = torch.ones(k, dtype=torch.bool)
    fewer = pending.clone()
    fewer[torch.argsort(w_true, descending=True)[:20]] = False
    sigma = torch.tensor([0.05])
    assert map_error(w_true[None], act, fewer, sigma) < map_error(w_true[None], act, pending, sigma)


def test_precision_is_checked_and_auto_follows_the_hardware(monkeypatch):
    from napari_gradcam.engine.methods.perturbation import scorecam as screen
    from napari_gradcam.errors import GradCamError, ParameterError

    cpu = torch.device("cpu")
    with pytest.raises(ParameterError, match="precision"):
        screen.resolve_precision("fp8", cpu)
    bundle, layer, img = _case("resnet18", "layer4")
    with pytest.raises(GradCamError, match="precision"):
        explain(bundle, img, "gradcam", precision="half")
    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(screen, "_cpu_has_native_bfloat16", lambda native=native: native)
        assert screen.resolve_precision("auto", cpu) == want
    assert screen.resolve_precision("float32", cpu) == "float32"
