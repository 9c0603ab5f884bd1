"""Vision transformers explained by the gradient CAM family: token outputs on their patch grid (class
token dropped), Swin's channels-last stages permuted, a default layer found from the module, heatmaps
at the image's size, and maps that follow the object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import napari_gradcam as ng
from napari_gradcam.engine import explain
from napari_gradcam.introspect.discover import stage_outputs
from napari_gradcam.introspect.layout import Layout, layout_of, to_spatial
from napari_gradcam.preprocess import bundle_tensor

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
models = pytest.importorskip("torchvision.models")

GRADIENT_FAMILY = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "gradcam-elementwise", "eigencam",
                   "eigengradcam", "layercam-fine"]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_layouts_and_reshaping():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # class token + 4 x 4 patches
    layout = layout_of(tokens)
    assert layout == Layout("tokens", (4, 4), 1)
    grid = to_spatial(tokens, layout)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])  # row-major patches after the class token
    nhwc = torch.randn(1, 8, 8, 24)
    assert layout_of(nhwc) == Layout("nhwc", (8, 8)) and torch.equal(to_spatial(nhwc, layout_of(nhwc))[0, 5], nhwc[0, ..., 5])
    assert layout_of(torch.randn(1, 24, 8, 8)) == Layout("nchw", (8, 8))
    assert layout_of(torch.randn(1, 196, 8)) == Layout("tokens", (14, 14), 0)  # no class token
    assert layout_of(torch.randn(1, 10)) is None and layout_of(torch.randn(1, 512, 1, 1)) is None
    assert layout_of((tokens,)) is None


@pytest.fixture(scope="module")
def vit_b_16():
    torch.manual_seed(0)
    model = models.vit_b_16(weights=None, image_size=64, num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head: no gradient at all
    return ng.wrap_model(model, ["a", "b", "c"], input_size=64)


@pytest.fixture(scope="module")
def swin_t():
    torch.manual_seed(0)
    return ng.wrap_model(models.swin_t(weights=None, num_classes=3), ["a", "b", "c"], input_size=64)


def test_default_layers_found_from_the_module(vit_b_16, swin_t):
    # ViT: the head reads the class token, which sees the patch tokens last in the final block's attention
    assert vit_b_16.target_layer == "encoder.layers.encoder_layer_11.ln_1"
    assert stage_outputs(vit_b_16.model, 3, 64) == ["encoder.layers.encoder_layer_11.ln_1"]
    # Swin: the channels-first view of the last stage, which a GAP + linear head reads (CAM works too)
    assert swin_t.target_layer == "permute"
    assert stage_outputs(swin_t.model, 3, 64) == ["features.3", "features.5", "permute"]
    zero_head = ng.wrap_model(models.vit_b_16(weights=None, image_size=32, num_classes=2), ["x", "y"], input_size=32)
    assert zero_head.target_layer == "encoder.layers.encoder_layer_11.ln_1"  # found even through a zero head


@pytest.mark.parametrize("fixture", ["vit_b_16", "swin_t"])
def test_every_gradient_method_gives_maps_at_the_image_size(fixture, request):
    bundle = request.getfixturevalue(fixture)
    img = np.random.default_rng(1).random((50, 70, 3)).astype(np.float32)
    for method in GRADIENT_FAMILY:
        h = explain(bundle, img, method, target=1)
        assert h.data.shape == (50, 70) and h.data.dtype == np.float32 and np.isfinite(h.data).all()
        assert 0.5 < h.data.max() <= 1.0, method
    assert explain(bundle, img, "gradcam").raw.shape == ((4, 4) if fixture == "vit_b_16" else (2, 2))
    f = ng.feature_maps(bundle, img, n=5)
    assert f.maps.shape[1:] == ((4, 4) if fixture == "vit_b_16" else (2, 2))
    assert _no_hooks(bundle.model) and all(p.grad is None for p in bundle.model.parameters())


def test_agrees_with_pytorch_grad_cam_reshape_transforms(vit_b_16, swin_t):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform

    img = np.random.default_rng(2).random((64, 64, 3)).astype(np.float32)
    cases = [(vit_b_16, "encoder.layers.encoder_layer_11.ln_1", lambda t: vit_reshape_transform(t, 4, 4)),
             (swin_t, "features.5", lambda t: swinT_reshape_transform(t.flatten(1, 2), 4, 4))]
    for bundle, layer, reshape in cases:
        for method, cls in (("gradcam", pgc.GradCAM), ("layercam", pgc.LayerCAM)):
            ours = explain(bundle, img, method, target=2, layer=layer).data
            with cls(model=bundle.model, target_layers=[bundle.model.get_submodule(layer)],
                     reshape_transform=reshape) as ref:
                theirs = ref(input_tensor=bundle_tensor(bundle, [img]), targets=[ClassifierOutputTarget(2)])[0]
            assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99, (layer, method)
        for p in bundle.model.parameters():
            p.grad = None


# ----------------------------------------------------------------------------- maps that follow the object
SIZE, SQUARE = 32, 8


def _squares(rng, n: int, present) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(n, 1, 32, 32) noise images, with a bright 8 x 8 square where ``present``; and the squares' corners."""
    x = rng.normal(0.3, 0.05, (n, 1, SIZE, SIZE)).astype(np.float32)
    corners = [tuple(int(v) for v in rng.integers(0, SIZE - SQUARE + 1, 2)) for _ in range(n)]
    for i, (r, c) in enumerate(corners):
        if present[i]:
            x[i, 0, r:r + SQUARE, c:c + SQUARE] = 1.0
    return x, corners


def _trained(model: nn.Module, steps: int = 250) -> "ng.ModelBundle":
    """Train ``model`` for a few steps to tell images with a square from images without."""
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        y = rng.integers(0, 2, 32)
        x, _ = _squares(rng, 32, y)
        loss = nn.functional.cross_entropy(model(torch.from_numpy((x - 0.5) / 0.25)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return ng.wrap_model(model, ["empty", "square"], input_size=SIZE, in_channels=1, mean=[0.5], std=[0.25])


@pytest.fixture(scope="module")
def tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=2)
    model.conv_proj = nn.Conv2d(1, 32, 8, 8)
    return _trained(model)


@pytest.fixture(scope="module")
def tiny_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                            stochastic_depth_prob=0.0, num_classes=2)
    model.features[0][0] = nn.Conv2d(1, 24, 4, 4)
    return _trained(model)


def _pointing(bundle, method: str, layer, tolerance: int = 0) -> tuple[int, list[tuple[int, int]]]:
    """On how many of 12 squares the map's peak cell (on the layer's grid) lies, or comes within
    ``tolerance`` px of, and the peak cells."""
    x, corners = _squares(np.random.default_rng(7), 12, [True] * 12)
    hits, peaks = 0, []
    for img, (r, c) in zip(x[:, 0], corners):
        h = explain(bundle, img, method, target="square", layer=layer)
        assert h.score > 0.9 and h.data.shape == (SIZE, SIZE)  # the model sees the square
        cell = SIZE // h.raw.shape[0]
        i, j = np.unravel_index(np.argmax(h.raw), h.raw.shape)
        t = tolerance
        hits += int(r - t < (i + 1) * cell and i * cell < r + SQUARE + t and c - t < (j + 1) * cell
                    and j * cell < c + SQUARE + t)
        peaks.append((int(i), int(j)))
    return hits, peaks


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_vit_map_follows_a_moving_square(tiny_vit, method):
    """Tokens with a class token (the first block's input, 4 x 4 patches of 8 px): the peak lands on the square."""
    hits, peaks = _pointing(tiny_vit, method, "encoder.dropout")
    assert hits >= 10 and len(set(peaks)) >= 6, peaks


@pytest.mark.parametrize("method", ["hirescam", "layercam"])
def test_swin_map_follows_a_moving_square(tiny_swin, method):
    """Swin's channels-last first stage (8 x 8 cells of 4 px): the peak lands on the square or on a cell
    touching it (this model detects the square's edges and lights the cells along them)."""
    hits, peaks = _pointing(tiny_swin, method, "features.1", tolerance=4)
    assert hits >= 10 and len(set(peaks)) >= 6, peaks


def test_swin_fine_preset_fuses_the_stages(tiny_swin):
    """The preset fuses the first stage (8 x 8, channels-last) with the last one (4 x 4, read by the head)."""
    assert stage_outputs(tiny_swin.model, 1, SIZE) == ["features.1", "permute"]
    img = _squares(np.random.default_rng(8), 1, [True])[0][0, 0]
    fine = explain(tiny_swin, img, "layercam-fine", target="square")
    assert fine.layer == "features.1+permute" and fine.raw.shape == (8, 8) and fine.raw.max() <= 1
    paper = explain(tiny_swin, img, "layercam-fine", target="square", fusion="max")
    assert paper.raw.max() == pytest.approx(np.tanh(2.0), abs=1e-5)  # LayerCAM's scaling of each layer's map


# ----------------------------------------------------------------------------- perturbation CAMs on tokens
TOKEN_LAYERS = [("tiny_vit", "encoder.layers.encoder_layer_1.ln_1", 4),  # tokens with a class token
                ("tiny_swin", "features.1", 8)]  # channels-last (B, h, w, C)


@pytest.mark.parametrize("fixture, layer, grid", TOKEN_LAYERS)
def test_score_cam_on_tokens_agrees_with_pytorch_grad_cam(fixture, layer, grid, request):
    """Score-CAM masks the input with each channel of the layer read on its grid, as pytorch-grad-cam does
    through its reshape transforms (class token dropped; channels-last permuted)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform

    bundle = request.getfixturevalue(fixture)
    reshape = ((lambda t: vit_reshape_transform(t, grid, grid)) if fixture == "tiny_vit"
               else (lambda t: swinT_reshape_transform(t.flatten(1, 2), grid, grid)))
    img = _squares(np.random.default_rng(9), 1, [True])[0][0, 0]
    ours = explain(bundle, img, "scorecam", target="square", layer=layer)
    assert ours.raw.shape == (grid, grid) and ours.data.shape == (SIZE, SIZE)
    model = bundle.model
    with pgc.ScoreCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as ref:
        theirs = ref(input_tensor=bundle_tensor(bundle, [img]), targets=[ClassifierOutputTarget(1)])[0]
    assert np.corrcoef(ours.data.ravel(), theirs.ravel())[0, 1] > 0.99
    assert _no_hooks(model)


@pytest.mark.parametrize("fixture, layer, grid", TOKEN_LAYERS)
def test_ablation_cam_on_tokens_is_the_brute_force_answer(fixture, layer, grid, request):
    """Known answer: w_k = (y_c - y_c^k) / y_c with channel k of the layer zeroed in every token (the class
    token too, as pytorch-grad-cam's ViT ablation layer does) or at every position, one whole pass per channel."""
    from napari_gradcam.introspect.layout import layout_of, to_spatial

    bundle = request.getfixturevalue(fixture)
    model = bundle.model
    img = _squares(np.random.default_rng(10), 1, [True])[0][0, 0]
    x = bundle_tensor(bundle, [img])
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o.clone()))
    with torch.no_grad():
        y = model(x)[0, 1]
    handle.remove()
    out = seen["out"]
    drops = []
    for k in range(out.shape[-1]):
        def zero_k(m, i, o, k=k):
            o = o.clone()
            o[..., k] = 0
            return o
        handle = model.get_submodule(layer).register_forward_hook(zero_k)
        with torch.no_grad():
            drops.append(float((y - model(x)[0, 1]) / y))
        handle.remove()
    act = to_spatial(out, layout_of(out))[0]
    want = torch.relu(torch.einsum("k,khw->hw", torch.tensor(drops), act)).numpy()
    ours = explain(bundle, img, "ablationcam", target="square", layer=layer)
    assert ours.raw.shape == (grid, grid) and want.max() > 0
    np.testing.assert_allclose(ours.raw / ours.raw.max(), want / want.max(), atol=1e-3)  # batched vs single passes
    assert _no_hooks(model)


@pytest.mark.parametrize("fixture, layer, grid", TOKEN_LAYERS)
def test_guided_gradcam_on_tokens(fixture, layer, grid, request):
    """captum's Guided Grad-CAM reads (B, K, h, w) layers only; on tokens and channels-last outputs it is
    captum's guided backprop times the Grad-CAM map on the layer's grid (computed here by hand: the
    gradient of the score with respect to the layer's output, averaged per channel), upsampled nearest."""
    from captum.attr import GuidedBackprop

    from napari_gradcam.introspect.layout import layout_of, to_spatial

    bundle = request.getfixturevalue(fixture)
    model = bundle.model
    img = _squares(np.random.default_rng(11), 1, [True])[0][0, 0]
    x = bundle_tensor(bundle, [img])
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    score = model(x)[0, 1]
    handle.remove()
    out = seen["out"]
    (grad,) = torch.autograd.grad(score, out)
    act, g = (to_spatial(t, layout_of(out))[0] for t in (out.detach(), grad))
    cam = torch.relu(torch.einsum("k,khw->hw", g.mean(dim=(1, 2)), act))
    guided = GuidedBackprop(model).attribute(x, target=1).detach()
    want = (guided * torch.nn.functional.interpolate(cam[None, None], size=x.shape[2:], mode="nearest")).sum(dim=1)[0]
    ours = explain(bundle, img, "guided-gradcam", target="square", layer=layer)
    assert cam.shape == (grid, grid) and ours.data.shape == (SIZE, SIZE)
    np.testing.assert_allclose(ours.data, (want / want.abs().max()).numpy(), atol=1e-4)
    assert _no_hooks(model)
