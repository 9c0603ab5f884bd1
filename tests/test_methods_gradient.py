"""The gradient CAM family against the anchor libraries, known identities, layers, targets and smoothing.

References are computed on a copy of the model whose ReLUs are not in place: on the original,
pytorch-grad-cam and torchcam would read a layer's output after the in-place ReLU that follows it
had overwritten it (we explain the layer's own output).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import napari_gradcam as ng
from napari_gradcam.engine import explain, tiled_heatmaps
from napari_gradcam.introspect.discover import stage_outputs
from napari_gradcam.engine.methods import get_method, list_methods, method_names
from napari_gradcam.errors import GradCamError, LayerError
from napari_gradcam.preprocess import bundle_tensor

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
pgc = pytest.importorskip("pytorch_grad_cam")

FAMILY = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "gradcam-elementwise", "eigencam",
          "eigengradcam"]
REFERENCE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
             "layercam": "LayerCAM", "gradcam-elementwise": "GradCAMElementWise", "eigencam": "EigenCAM",
             "eigengradcam": "EigenGradCAM"}


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


_CLEAN: dict[int, nn.Module] = {}


def _clean_copy(model: nn.Module) -> nn.Module:
    """The model with every in-place operation switched off (for the reference libraries); one per model."""
    if id(model) not in _CLEAN:
        ref = copy.deepcopy(model)
        for m in ref.modules():
            if hasattr(m, "inplace"):
                m.inplace = False
        _CLEAN[id(model)] = ref
    return _CLEAN[id(model)]


def _oriented(batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's principal-component projection, oriented by our convention (positive
    correlation with the channel sum); its own sign is whatever the SVD returns."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    out = []
    for proj, weighted in zip(get_2d_projection(batch), batch):
        plain = weighted.sum(axis=0) - weighted.sum(axis=0).mean()
        out.append(proj if float((proj * plain).sum()) >= 0 else -proj)
    return np.float32(out)


@pytest.fixture
def oriented_eigen(monkeypatch):
    import importlib

    for name in ("base_cam", "eigen_cam", "eigen_grad_cam", "hirescam", "layer_cam", "grad_cam_elementwise"):
        monkeypatch.setattr(importlib.import_module(f"pytorch_grad_cam.{name}"), "get_2d_projection", _oriented)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ng.build_model("resnet18", ["a", "b", "c"], in_channels=3, input_size=96)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return ng.build_model("vgg16", ["a", "b", "c"], in_channels=3, input_size=64)


def _reference(bundle, method: str, layer: str, img: np.ndarray, target: int, **kwargs) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _clean_copy(bundle.model)
    cls = getattr(pgc, REFERENCE[method])
    with cls(model=model, target_layers=[model.get_submodule(layer)]) as ref:
        return ref(input_tensor=bundle_tensor(bundle, [img]), targets=[ClassifierOutputTarget(target)], **kwargs)[0]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _agree(ours: np.ndarray, theirs: np.ndarray) -> bool | None:
    """True/False: the maps correlate > 0.99; None: both are empty (all zero), nothing to compare."""
    if ours.max() == 0 or np.ptp(theirs) == 0:
        assert ours.max() == 0 and np.ptp(theirs) == 0, "one library found evidence, the other none"
        return None
    return _corr(ours, theirs) > 0.99


# ----------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("arch,layer", [("resnet", "layer4"), ("vgg", "features.14")])
def test_agrees_with_pytorch_grad_cam(method, arch, layer, request, oriented_eigen):
    """ResNet-18 layer4 and VGG-16 conv3_3 (followed by an in-place ReLU): correlation > 0.99 per class."""
    bundle = request.getfixturevalue(arch)
    size = bundle.input_size
    img = np.random.default_rng(3).random((size, size, 3)).astype(np.float32)
    checked = []
    for target in range(3):
        ours = explain(bundle, img, method, target=target, layer=layer)
        assert ours.layer == layer and ours.method == method and ours.data.shape == (size, size)
        checked.append(_agree(ours.data, _reference(bundle, method, layer, img, target)))
    assert all(c is not False for c in checked) and checked.count(True) >= 2
    assert all(p.grad is None for p in bundle.model.parameters()) and _no_hooks(bundle.model)


def test_inplace_relu_is_where_pytorch_grad_cam_drifts(vgg):
    """The reason for the clean copy: on the original model pytorch-grad-cam reads features.14's output
    after ReLU 15 overwrote it, so its map differs from the layer's own (which we return)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    img = np.random.default_rng(3).random((64, 64, 3)).astype(np.float32)
    layer = "features.14"
    with pgc.GradCAM(model=vgg.model, target_layers=[vgg.model.get_submodule(layer)]) as ref:
        on_original = ref(input_tensor=bundle_tensor(vgg, [img]), targets=[ClassifierOutputTarget(0)])[0]
    ours = explain(vgg, img, "gradcam", target=0, layer=layer).data
    assert _corr(ours, _reference(vgg, "gradcam", layer, img, 0)) > 0.999
    assert _corr(ours, on_original) < 0.99
    for p in vgg.model.parameters():
        p.grad = None


class GapNet(nn.Module):
    """conv -> in-place ReLU -> conv -> GAP -> linear; not in the registry."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.body = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)
        self.fail = False

    def forward(self, x):
        a = self.body(self.stem(x))
        if self.fail:
            raise RuntimeError("boom")
        return self.head(a.mean(dim=(2, 3)))


class FcNet(nn.Module):
    """conv -> ReLU -> conv -> flatten -> linear: no CAM head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def gapnet():
    torch.manual_seed(4)
    return ng.wrap_model(GapNet(), ["a", "b", "c"], input_size=16)


def test_identities_on_a_gap_linear_head(gapnet):
    """For logits = W GAP(A) + b the gradient is W_c / (h w) at every position, so HiResCAM = ReLU(CAM) / (h w)
    and XGrad-CAM = Grad-CAM; a score function's map follows linearly (HiResCAM of z1 - z0)."""
    img = np.random.default_rng(5).random((16, 16, 3)).astype(np.float32)
    cams = explain(gapnet, img, "cam", target="all")
    hw = cams[0].raw.size
    for c, cam in enumerate(cams):
        hires = explain(gapnet, img, "hirescam", target=c)
        np.testing.assert_allclose(hires.raw * hw, np.maximum(cam.raw, 0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(explain(gapnet, img, "xgradcam", target=c).data,
                                   explain(gapnet, img, "gradcam", target=c).data, atol=1e-5)
    diff = explain(gapnet, img, "hirescam", target=lambda z: z[:, 1] - z[:, 0])
    np.testing.assert_allclose(diff.raw * hw, np.maximum(cams[1].raw - cams[0].raw, 0), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = gapnet.model(bundle_tensor(gapnet, [img]))[0]
    assert diff.target == "custom" and diff.target_index == -1
    assert diff.score == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)


def test_targets_lists_and_functions_from_one_forward_pass(resnet):
    calls = []
    handle = resnet.model.register_forward_pre_hook(lambda *a: calls.append(1))
    img = np.random.default_rng(6).random((50, 60, 3))
    try:
        maps = explain(resnet, img, "layercam", target=["b", lambda z: z[:, 0] + z[:, 2], 0])
    finally:
        handle.remove()
    assert len(calls) == 1 and [m.target for m in maps] == ["b", "custom", "a"]
    np.testing.assert_array_equal(maps[0].data, explain(resnet, img, "layercam", target=1).data)
    with pytest.raises(GradCamError, match="one score per image"):
        explain(resnet, img, "gradcam", target=lambda z: z)
    assert _no_hooks(resnet.model)


def test_eigencam_ignores_the_class_and_all_work_under_inference_mode(resnet):
    img = np.random.default_rng(7).random((40, 40, 3))
    maps = explain(resnet, img, "eigencam", target="all")
    for m in maps[1:]:
        np.testing.assert_array_equal(m.data, maps[0].data)
    plain = explain(resnet, img, "gradcam")
    with torch.inference_mode():  # a caller's inference mode does not stop the gradient methods
        np.testing.assert_array_equal(explain(resnet, img, "gradcam").data, plain.data)
        np.testing.assert_array_equal(explain(resnet, img, "eigencam").data, maps[0].data)
    assert torch.is_grad_enabled() and _no_hooks(resnet.model)


# ----------------------------------------------------------------------------- layers and fusion
def test_layer_as_name_module_list_and_fine_preset(resnet):
    img = np.random.default_rng(8).random((70, 70, 3))
    by_name = explain(resnet, img, "gradcam", target=0, layer="layer3")
    by_module = explain(resnet, img, "gradcam", target=0, layer=resnet.model.layer3)
    np.testing.assert_array_equal(by_name.data, by_module.data)
    assert by_module.layer == "layer3"
    assert stage_outputs(resnet.model, 3, 96) == ["layer2", "layer3", "layer4"]
    fine = explain(resnet, img, "layercam", target=0, layer="fine")
    assert fine.layer == "layer2+layer3+layer4" and fine.raw.shape == (12, 12)
    listed = explain(resnet, img, "layercam", target=0, layer=[resnet.model.layer2, "layer3", "layer4", "layer3"])
    np.testing.assert_array_equal(listed.data, fine.data)
    preset = explain(resnet, img, "layercam-fine", target=0)
    np.testing.assert_array_equal(preset.data, fine.data)
    with pytest.raises(LayerError, match="feeding the pooling head"):
        explain(resnet, img, "cam", layer=["layer3", "layer4"])
    assert explain(resnet, img, "cam", layer=[resnet.model.layer4]).layer == "layer4"
    with pytest.raises(LayerError, match="not part of the model"):
        explain(resnet, img, "gradcam", layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(LayerError, match="dotted name"):
        explain(resnet, img, "gradcam", layer=3)
    assert _no_hooks(resnet.model)


def test_fine_preset_of_simple_cnn_and_vgg(vgg):
    b = ng.build_model("simple_cnn", ["a", "b"], in_channels=1, input_size=64)
    assert stage_outputs(b.model, 1, 64) == ["features.block2.relu2", "features.block3.relu2", "features"]
    assert stage_outputs(vgg.model, 3, 64) == ["features.22", "features.29", "features"]


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_mean_fusion_agrees_with_pytorch_grad_cam(resnet, method):
    """layer=[layer2, layer3, layer4] (default fusion="mean"): pytorch-grad-cam with three target layers."""
    img = np.random.default_rng(9).random((96, 96, 3)).astype(np.float32)
    layers = ["layer2", "layer3", "layer4"]
    model = _clean_copy(resnet.model)
    checked = []
    for target in range(3):
        ours = explain(resnet, img, method, target=target, layer=layers)
        with getattr(pgc, REFERENCE[method])(model=model, target_layers=[model.get_submodule(n) for n in layers]) as ref:
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            theirs = ref(input_tensor=bundle_tensor(resnet, [img]), targets=[ClassifierOutputTarget(target)])[0]
        checked.append(_agree(ours.data, theirs))
        # the fusion changes the map: it is not the last layer's alone
        assert _corr(ours.data, explain(resnet, img, method, target=target, layer="layer4").data) < 0.99
    assert all(c is not False for c in checked) and checked.count(True) >= 2


def test_max_fusion_agrees_with_torchcam(resnet):
    """fusion="max" with LayerCAM: torchcam's fuse_cams (each map min-max scaled, tanh(2 M), maximum)."""
    torchcam = pytest.importorskip("torchcam.methods")
    img = np.random.default_rng(9).random((96, 96, 3)).astype(np.float32)
    layers = ["layer2", "layer3", "layer4"]
    model = _clean_copy(resnet.model)
    x = bundle_tensor(resnet, [img])
    for target in range(3):
        ours = explain(resnet, img, "layercam", target=target, layer=layers, fusion="max")
        with torchcam.LayerCAM(model, target_layer=layers, input_shape=(3, 96, 96)) as extractor:
            cams = extractor(class_idx=target, scores=model(x))
            fused = torchcam.LayerCAM.fuse_cams(cams)
        theirs = torch.nn.functional.interpolate(fused[None], size=(96, 96), mode="bilinear")[0, 0].detach().numpy()
        assert _corr(ours.data, theirs) > 0.99
        assert _corr(ours.data, explain(resnet, img, "layercam", target=target, layer=layers).data) < 0.99
    with pytest.raises(GradCamError, match="fusion must be"):
        explain(resnet, img, "layercam", layer=layers, fusion="sum")


# ----------------------------------------------------------------------------- smoothing
@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_aug_smooth_agrees_with_pytorch_grad_cam(resnet, method, oriented_eigen):
    img = np.random.default_rng(10).random((96, 96, 3)).astype(np.float32)
    for target in range(2):
        ours = explain(resnet, img, method, target=target, layer="layer4", smooth="aug")
        assert ours.smooth == "aug"
        theirs = _reference(resnet, method, "layer4", img, target, aug_smooth=True)
        assert _agree(ours.data, theirs) is not False
        plain = explain(resnet, img, method, target=target, layer="layer4")
        assert not np.allclose(ours.data, plain.data, atol=1e-3)  # the six views changed the map


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam"])
def test_eigen_smooth_agrees_with_pytorch_grad_cam(resnet, method, oriented_eigen):
    img = np.random.default_rng(11).random((96, 96, 3)).astype(np.float32)
    checked = []
    for target in range(3):
        ours = explain(resnet, img, method, target=target, layer="layer4", smooth="eigen")
        checked.append(_agree(ours.data, _reference(resnet, method, "layer4", img, target, eigen_smooth=True)))
    assert all(c is not False for c in checked) and checked.count(True) >= 2


def test_smooth_arguments(resnet):
    img = np.random.default_rng(12).random((40, 40, 3))
    both = explain(resnet, img, "gradcam", smooth="aug+eigen", shifts=2)
    assert both.smooth == "aug+eigen" and both.shifts == 2 and both.data.shape == (40, 40)
    assert both.data.max() == pytest.approx(1.0)
    assert explain(resnet, img, "gradcam", smooth=["eigen", "aug"]).smooth == "aug+eigen"
    for bad in ("gauss", 3, ["aug", "x"]):
        with pytest.raises(GradCamError, match="smooth must be"):
            explain(resnet, img, "gradcam", smooth=bad)
    with pytest.raises(GradCamError, match="no eigen smoothing"):
        explain(resnet, img, "cam", smooth="eigen")


# ----------------------------------------------------------------------------- any module, any method
@pytest.mark.parametrize("module", [GapNet, FcNet])
def test_custom_modules_explained_by_every_method(module):
    """Every registered method on modules the registry has never seen (CAM only where the head allows)."""
    torch.manual_seed(5)
    b = ng.wrap_model(module(), ["a", "b", "c"], input_size=16)
    img = np.random.default_rng(13).random((20, 24, 3)).astype(np.float32)
    for name in method_names():
        if name == "cam" and module is FcNet:
            with pytest.raises(LayerError, match="global-average-pooling"):
                explain(b, img, name)
            continue
        h = explain(b, img, name, target="all")
        assert [m.target for m in h] == ["a", "b", "c"]
        for m in h:
            assert m.data.shape == (20, 24) and m.data.dtype == np.float32 and np.isfinite(m.data).all()
    t = tiled_heatmaps(b, np.random.default_rng(14).random((40, 50, 3)), tile=16, method="layercam")
    assert t.heatmaps.shape == (3, 40, 50)
    if module is GapNet:  # the CAM head found from the module also serves the fully convolutional mode
        assert tiled_heatmaps(b, np.random.default_rng(14).random((40, 50, 3)), tile=16, mode="fullconv").heatmaps.shape == (3, 40, 50)
    assert ng.feature_maps(b, img, n=4).maps.shape[0] == 4
    assert _no_hooks(b.model) and all(p.grad is None for p in b.model.parameters())


def _bad_target(z):
    raise RuntimeError("target failed")


def test_nothing_left_behind_after_any_method_even_on_errors(gapnet):
    """No hooks, no .grad, the caller's grad mode, after every method and after errors in the forward pass,
    in the target function and in argument checks."""
    model = gapnet.model
    img = np.random.default_rng(15).random((16, 16, 3))
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            for name in method_names():
                on_layers = get_method(name).family == "cam"  # shifts and test-time views apply to layer maps
                explain(gapnet, img, name, target="all", **(dict(shifts=2, smooth="aug") if on_layers else {}))
                with pytest.raises((RuntimeError, GradCamError), match="target failed|function of the logits"):
                    explain(gapnet, img, name, target=_bad_target)
                model.fail = True
                try:
                    with pytest.raises(RuntimeError, match="boom"):
                        explain(gapnet, img, name)
                finally:
                    model.fail = False
                with pytest.raises(LayerError):
                    explain(gapnet, img, name, layer="stem.9")
                assert torch.is_grad_enabled() == grad_mode, name
                assert _no_hooks(model) and all(p.grad is None for p in model.parameters()), name


def test_registry_lists_the_family_with_formulas():
    from napari_gradcam.engine.methods.gradient import family_member

    listed = {m["name"]: m for m in list_methods()}
    for name in FAMILY + ["layercam-fine"]:
        assert listed[name]["family"] == "cam" and listed[name]["description"]
        doc = family_member(name).weigh.__doc__
        assert "20" in doc and ("=" in doc or "component" in doc)  # the paper's year and the formula
