"""The explanation engine against known answers and an established library."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam.errors import GradCamError, LayerError
from napari_gradcam.engine import explain, feature_maps, iter_tiled_heatmaps, tiled_heatmaps
from napari_gradcam.engine import tiling
from napari_gradcam.preprocess import bundle_tensor


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", ["a", "b", "c"], in_channels=1, input_size=64)
    with torch.no_grad():  # non-trivial BN statistics so maps are not degenerate
        for m in b.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return b


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    return ng.build_model("resnet18", ["a", "b", "c"], in_channels=3, input_size=224)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:90, :120]
    return (np.exp(-((yy - 30) ** 2 + (xx - 80) ** 2) / 300.0) * 200 + rng.normal(0, 10, (90, 120))).astype(np.float32)


# ----------------------------------------------------------------------------- CAM
def test_cam_equals_hand_computation(cnn, image):
    """CAM_c = sum_k W[c,k] A_k, computed by hand from the trunk's output and the linear weights."""
    x = bundle_tensor(cnn, [image])
    with torch.no_grad():
        feats = cnn.model.features(x)[0]  # (K, h, w)
        logits = cnn.model(x)[0]
    W, bias = cnn.model.classifier.weight, cnn.model.classifier.bias
    for c in range(3):
        hand = sum(W[c, k].item() * feats[k].numpy() for k in range(feats.shape[0]))
        h = explain(cnn, image, "cam", target=c)
        np.testing.assert_allclose(h.raw, hand, rtol=1e-4, atol=1e-5)
        # the CAM identity: spatial mean + bias is the logit
        assert h.raw.mean() + bias[c].item() == pytest.approx(logits[c].item(), abs=1e-4)
        np.testing.assert_allclose(h.data, _normalised_full(h.raw, image.shape), atol=1e-5)


def _normalised_full(raw, shape):
    import torch.nn.functional as F

    pos = np.maximum(raw, 0)
    up = F.interpolate(torch.from_numpy(pos)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
    return (up / pos.max()).numpy() if pos.max() > 0 else np.zeros(shape, np.float32)


def test_cam_refused_for_fully_connected_heads():
    b = ng.build_model("vgg16", ["a", "b"], 1, 32)
    with pytest.raises(LayerError, match="Grad-CAM"):
        explain(b, np.zeros((32, 32)), "cam")
    assert _no_hooks(b.model)


# ----------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("arch", ["simple_cnn", "resnet18"])
def test_gradcam_equals_relu_cam_on_gap_linear_head(arch, image):
    """For logits = W GAP(A) + b, dy_c/dA = W_c / (h w) everywhere, so Grad-CAM = ReLU(CAM) / (h w)."""
    torch.manual_seed(2)
    b = ng.build_model(arch, ["a", "b", "c"], 1, 64)
    for c in range(3):
        cam = explain(b, image, "cam", target=c)
        grad = explain(b, image, "gradcam", target=c)
        hw = cam.raw.size
        np.testing.assert_allclose(grad.raw * hw, np.maximum(cam.raw, 0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grad.data, cam.data, atol=1e-4)


@pytest.mark.parametrize("method,cls", [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus")])
def test_agrees_with_pytorch_grad_cam(resnet, method, cls):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    img = np.random.default_rng(3).random((224, 224, 3)).astype(np.float32)
    x = bundle_tensor(resnet, [img])
    for target in range(3):
        ours = explain(resnet, img, method, target=target, layer="layer4")
        with getattr(pgc, cls)(model=resnet.model, target_layers=[resnet.model.layer4]) as ref:
            theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
        assert np.corrcoef(ours.data.ravel(), theirs.ravel())[0, 1] > 0.999
    for p in resnet.model.parameters():  # their library leaves nothing our later tests depend on
        p.grad = None


def test_all_targets_from_one_forward_pass(resnet):
    calls = []
    handle = resnet.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps = explain(resnet, np.random.rand(100, 100, 3), "gradcam", target="all")
    finally:
        handle.remove()
    assert len(calls) == 1 and [m.target for m in maps] == ["a", "b", "c"]
    assert not np.allclose(maps[0].raw, maps[1].raw)


def test_no_parameter_gradients_no_hooks_grad_mode_restored(resnet):
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            explain(resnet, np.random.rand(64, 64, 3), "gradcam++")
            assert torch.is_grad_enabled() == grad_mode
    assert all(p.grad is None for p in resnet.model.parameters())
    assert _no_hooks(resnet.model)


@pytest.mark.parametrize("arch,layers", [
    ("resnet18", ["layer4", "layer3", "layer4.1.relu", "layer2.0.conv1"]),  # in-place ReLU modules, reused
    ("densenet121", ["features", "features.denseblock3", "features.norm5"]),  # functional in-place ReLU after features
    ("mobilenet_v2", ["features", "features.10"]),
    ("efficientnet_b0", ["features"]),
    ("alexnet", ["features"]),
])
def test_gradcam_on_inplace_architectures(arch, layers):
    torch.manual_seed(0)
    b = ng.build_model(arch, ["a", "b"], 1, 64)
    img = np.random.default_rng(0).random((50, 70))
    for layer in layers:
        for method in ("gradcam", "gradcam++"):
            h = explain(b, img, method, layer=layer)
            assert h.data.shape == (50, 70) and h.data.dtype == np.float32
            assert np.isfinite(h.data).all() and 0 <= h.data.min() and h.data.max() <= 1
            assert h.layer == layer
    assert all(p.grad is None for p in b.model.parameters())
    assert _no_hooks(b.model)


def test_bad_layer_leaves_no_hooks(resnet):
    with pytest.raises(LayerError, match="fc"):
        explain(resnet, np.zeros((32, 32, 3)), "gradcam", layer="fc")  # 2D output
    with pytest.raises(LayerError, match="no layer"):
        explain(resnet, np.zeros((32, 32, 3)), "gradcam", layer="layer9")
    assert _no_hooks(resnet.model)


def test_result_fields_and_sizes(cnn):
    for shape in [(1, 1), (1, 50), (17, 300), (300, 17, 3), (40, 40, 4)]:
        img = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
        h = explain(cnn, img, "gradcam", target="b")
        assert h.data.shape == shape[:2] and h.data.dtype == np.float32
        assert h.target == "b" and h.target_index == 1 and h.method == "gradcam" and h.layer == "features"
        assert h.score == pytest.approx(float(h.probabilities[1])) and h.probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert h.raw.shape == (8, 8) and h.max >= 0
    pred = explain(cnn, np.ones((20, 20)), "cam")
    assert pred.target_index == int(np.argmax(pred.probabilities))
    with pytest.raises(GradCamError, match="Unknown method"):
        explain(cnn, np.ones((20, 20)), "lime")
    with pytest.raises(GradCamError, match="Unknown class"):
        explain(cnn, np.ones((20, 20)), target="zebra")


def test_thread_safe(resnet):
    imgs = [np.random.default_rng(i).random((120, 120, 3)) for i in range(4)]
    expected = [explain(resnet, im, "gradcam").data for im in imgs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: explain(resnet, im, "gradcam").data, imgs * 2))
    for e, g in zip(expected * 2, got):
        np.testing.assert_allclose(e, g, atol=1e-5)
    assert _no_hooks(resnet.model) and threading.active_count() >= 1


# ----------------------------------------------------------------------------- feature maps
def test_feature_maps(cnn, image):
    f = feature_maps(cnn, image, layer="features.block2", n=5)
    with torch.no_grad():
        ref = cnn.model.features.block2(cnn.model.features.block1(bundle_tensor(cnn, [image])))[0].numpy()
    order = np.argsort(-ref.mean(axis=(1, 2)))[:5]
    assert f.maps.shape == (5, 16, 16) and list(f.channels) == list(order)
    np.testing.assert_allclose(f.maps, ref[order], atol=1e-5)
    assert list(f.scores) == sorted(f.scores, reverse=True)
    assert feature_maps(cnn, image, n=1000).maps.shape[0] == 128  # capped by the channel count
    assert _no_hooks(cnn.model)


# ----------------------------------------------------------------------------- tiling
def test_tile_starts_cover_everything():
    for length in [1, 100, 223, 224, 225, 700, 1000, 1023]:
        for stride in [56, 112, 224]:
            starts = tiling.tile_starts(length, 224, stride)
            covered = np.zeros(max(length, 224), bool)
            for s in starts:
                covered[s : s + 224] = True
            assert covered[:length].all() and starts[-1] + 224 >= length and starts == sorted(set(starts))


@pytest.fixture(scope="module")
def big_cnn():
    torch.manual_seed(5)
    return ng.build_model("simple_cnn", [f"class{i}" for i in range(7)], 1, 64)


def test_tiled_covers_whole_image_any_classes(big_cnn):
    img = np.random.default_rng(0).random((700, 1000)).astype(np.float32)
    t = tiled_heatmaps(big_cnn, img, tile=224, overlap=0.5)  # tiles larger than the input: resized
    assert t.heatmaps.shape == (7, 700, 1000) and t.heatmaps.dtype == np.float32
    assert t.tiles == len(tiling.tile_starts(700, 224, 112)) * len(tiling.tile_starts(1000, 224, 112))
    # every pixel is covered: the probabilities sum to 1 everywhere
    np.testing.assert_allclose(t.probability_maps.sum(axis=0), 1.0, atol=1e-4)
    assert 0 <= t.heatmaps.min() and t.heatmaps.max() <= 1
    assert sum(t.breakdown.values()) == pytest.approx(1.0) and set(t.breakdown) == set(t.classes)
    top = tiled_heatmaps(big_cnn, img, tile=224, overlap=0.5, classes=3)
    assert len(top.classes) == 3 and top.heatmaps.shape == (3, 700, 1000)
    ranked = sorted(t.probabilities, key=t.probabilities.get, reverse=True)[:3]
    assert set(top.classes) == set(ranked)
    named = tiled_heatmaps(big_cnn, img[:300, :300], tile=64, classes=["class5", "class1"])
    assert named.classes == ["class5", "class1"] and named.heatmaps.shape == (2, 300, 300)


def test_tiled_progress_and_small_image(cnn):
    gen = iter_tiled_heatmaps(cnn, np.random.rand(200, 150), tile=64, overlap=0.5, batch_size=4)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert events[0] == (0, result.tiles) and events[-1] == (result.tiles, result.tiles)
    assert [d for d, _ in events] == sorted(d for d, _ in events)
    small = tiled_heatmaps(cnn, np.random.rand(30, 20), tile=64)  # smaller than one tile: padded
    assert small.heatmaps.shape == (3, 30, 20) and small.tiles == 1


def _seam_ratio(heat: np.ndarray, starts: list[int], tile: int) -> float:
    """Largest step across tile borders relative to the largest step elsewhere (columns)."""
    d = np.abs(np.diff(heat, axis=-1)).max(axis=(0, 1))
    borders = sorted({s - 1 for s in starts if s > 0} | {s + tile - 1 for s in starts if s + tile < heat.shape[-1]})
    inside = np.delete(d, borders)
    return float(d[borders].max() / inside.max())


def test_no_seams_with_smooth_model(cnn, monkeypatch):
    yy, xx = np.mgrid[:128, :512]
    img = (np.sin(xx / 40.0) + np.cos(yy / 30.0)).astype(np.float32)  # smooth image -> smooth response
    blended = tiled_heatmaps(cnn, img, tile=64, overlap=0.5)
    starts = tiling.tile_starts(512, 64, 32)
    assert _seam_ratio(blended.heatmaps, starts, 64) < 1.5
    # the same check catches seams: without the window and overlap, borders show steps
    monkeypatch.setattr(tiling.blend, "blend_window", lambda t: np.ones((t, t), np.float32))
    hard = tiled_heatmaps(cnn, img, tile=64, overlap=0.0)
    assert _seam_ratio(hard.heatmaps, tiling.tile_starts(512, 64, 64), 64) > 1.5


def test_gradcam_tiles(cnn):
    img = np.random.default_rng(1).random((150, 130))
    for method in ("gradcam", "gradcam++"):
        t = tiled_heatmaps(cnn, img, tile=64, overlap=0.25, method=method)
        assert t.heatmaps.shape == (3, 150, 130) and np.isfinite(t.heatmaps).all()
    assert _no_hooks(cnn.model)


def test_dask_input_is_lazy_and_matches_numpy(cnn):
    da = pytest.importorskip("dask.array")
    img = np.random.default_rng(2).random((300, 260)).astype(np.float32)
    ref = tiled_heatmaps(cnn, img, tile=64, overlap=0.5)
    lazy = tiled_heatmaps(cnn, da.from_array(img, chunks=100), tile=64, overlap=0.5, chunk=128)
    assert isinstance(lazy.heatmaps, da.Array) and lazy.heatmaps.shape == (3, 300, 260)
    assert lazy.heatmaps.chunksize[1:] == (128, 128)
    np.testing.assert_allclose(lazy.heatmaps.compute(), ref.heatmaps, atol=1e-5)
    np.testing.assert_allclose(lazy.probability_maps.compute(), ref.probability_maps, atol=1e-5)
    assert lazy.breakdown == pytest.approx(ref.breakdown, abs=1e-3)
    with pytest.raises(GradCamError, match="top-k"):
        tiled_heatmaps(cnn, da.from_array(img, chunks=100), tile=64, classes=2, chunk=128)


def test_chain_of_least_overlapping_tiles():
    """The chain: 0, then the largest grid start at most one tile further, up to the last (shifted) start;
    each pixel owned by the chain tile whose centre is nearest, boundaries rounded (half up) to f."""
    starts = tiling.tile_starts(1000, 256, 192)
    assert starts == [0, 192, 256, 384, 512, 576, 744]  # a stride that does not divide the tile: plus 256, 512
    for stride in (128, 256, 64, 192, 100):  # any stride: the multiples of the tile, then the shifted last tile
        assert tiling.chain_starts(tiling.tile_starts(1000, 256, stride), 256) == [0, 256, 512, 744]
        assert tiling.chain_ownership(1000, 256, stride) == {0: (0, 256), 256: (256, 512), 512: (512, 756),
                                                             744: (756, 1000)}
    assert tiling.chain_ownership(1000, 256, 128, f=8)[744] == (760, 1000)  # midpoint 756 = 94.5 cells -> 95
    assert tiling.chain_ownership(256, 256, 128) == {0: (0, 256)}
    for length in (256, 300, 513, 1000, 1023):
        for tile, stride in ((256, 256), (256, 128), (256, 192), (256, 100), (64, 48), (64, 1)):
            starts = tiling.tile_starts(length, tile, stride)
            chain = tiling.chain_starts(starts, tile)
            own = tiling.chain_ownership(length, tile, stride)
            assert set(chain) <= set(starts) and chain[0] == 0 and chain[-1] == starts[-1] == list(own)[-1]
            assert all(b - a <= tile for a, b in pairwise(chain))  # a chain covers the axis
            edges = [e for lo_hi in own.values() for e in lo_hi]
            assert edges[0] == 0 and edges[-1] == length and edges[1:-1:2] == edges[2:-1:2]  # a partition
            assert all(s <= lo < hi <= s + tile for s, (lo, hi) in own.items())  # within its tile
            assert chain[:-1] == list(range(0, length - tile, tile))[: len(chain) - 1]


def _nearest_chain_tile(length: int, tile: int, stride: int) -> np.ndarray:
    """(length,) the start of the chain tile whose centre is nearest each pixel centre (brute force)."""
    chain = np.array(tiling.chain_starts(tiling.tile_starts(length, tile, stride), tile))
    dist = np.abs(np.arange(length)[:, None] + 0.5 - (chain[None, :] + tile / 2))
    return chain[np.argmin(dist, axis=1)]


@pytest.mark.parametrize("tile, overlap", [(64, 0.5), (64, 0.25), (128, 0.5)])
def test_probability_maps_are_the_nearest_chain_tiles(cnn, tile, overlap):
    """Known answer: each pixel's probabilities are those of its nearest chain tile, run on its own
    (``f`` = 1 pixel for 64 px tiles, exact everywhere; 2 for 128 px, compared f pixels from the
    boundaries, where the blending grid's bilinear upsampling mixes two tiles)."""
    img = np.random.default_rng(4).random((200, 150)).astype(np.float32)
    t = tiled_heatmaps(cnn, img, tile=tile, overlap=overlap)
    stride = max(1, round(tile * (1 - overlap)))
    f = tiling.blend_factor(tile, stride)
    assert img.shape == tiling.plan._padded_shape(200, 150, tile, f)  # no padding: tiles start in the image
    rows, cols = _nearest_chain_tile(200, tile, stride), _nearest_chain_tile(150, tile, stride)
    checked = 0
    for ty in np.unique(rows):
        for tx in np.unique(cols):
            x = bundle_tensor(cnn, [img[ty : ty + tile, tx : tx + tile]], vrange=(float(img.min()), float(img.max())))
            with torch.no_grad():
                p = torch.softmax(cnn.model(x), dim=1)[0].numpy()
            ys, xs = np.flatnonzero(rows == ty), np.flatnonzero(cols == tx)
            m = 0 if f == 1 else f
            inner = t.probability_maps[:, ys[0] + m * (ys[0] > 0) : ys[-1] + 1 - m * (ys[-1] < 199),
                                       xs[0] + m * (xs[0] > 0) : xs[-1] + 1 - m * (xs[-1] < 149)]
            np.testing.assert_allclose(inner, np.broadcast_to(p[:, None, None], inner.shape), atol=1e-5)
            checked += inner[0].size
    assert checked > (0.999 if f == 1 else 0.8) * img.size


def test_probability_maps_same_at_any_dividing_overlap(cnn):
    """Overlaps 0, 0.5 and 0.75 share their chain (the non-overlapping grid): the same probability maps and
    breakdown from 1, 3.4 and 12 times the tiles, while the heat maps differ (blended from all tiles)."""
    img = np.random.default_rng(5).random((256, 192)).astype(np.float32)
    runs = [tiled_heatmaps(cnn, img, tile=64, overlap=o) for o in (0.0, 0.5, 0.75)]
    assert [r.tiles for r in runs] == [12, 35, 117]
    for r in runs[1:]:
        np.testing.assert_allclose(r.probability_maps, runs[0].probability_maps, atol=1e-5)
        assert r.breakdown == pytest.approx(runs[0].breakdown, abs=1e-6)
        assert np.abs(r.heatmaps - runs[0].heatmaps).max() > 0.01


def test_lazy_probability_maps_match_numpy_at_a_non_dividing_stride(cnn):
    """A stride (192 of 256) that adds the multiples of the tile, chain tiles that overlap (the last),
    a boundary rounded to the 4 px blending grid, several chunks: the lazy path gives the numpy path's probability maps, breakdown and mean probabilities."""
    da = pytest.importorskip("dask.array")
    img = np.random.default_rng(6).random((700, 600)).astype(np.float32)
    ref = tiled_heatmaps(cnn, img, tile=256, overlap=0.25)
    assert ref.extra["blend_step"] == 4 and tiling.chain_ownership(700, 256, 192, 4)[444] == (480, 700)  # 478 rounded
    lazy = tiled_heatmaps(cnn, da.from_array(img, chunks=200), tile=256, overlap=0.25, chunk=256)
    assert lazy.lazy and lazy.probability_maps.numblocks == (1, 3, 3)
    np.testing.assert_allclose(lazy.probability_maps.compute(), ref.probability_maps, atol=1e-5)
    np.testing.assert_allclose(lazy.heatmaps.compute(), ref.heatmaps, atol=1e-5)
    assert lazy.breakdown == pytest.approx(ref.breakdown, abs=1e-6)
    assert lazy.probabilities == pytest.approx(ref.probabilities, abs=1e-6)


def test_fullconv_mode(cnn):
    img = np.random.default_rng(3).random((256, 320)).astype(np.float32)
    fc = tiled_heatmaps(cnn, img, tile=64, mode="fullconv")
    tl = tiled_heatmaps(cnn, img, tile=64, overlap=0.5)
    assert fc.heatmaps.shape == tl.heatmaps.shape and fc.mode == "fullconv"
    assert sum(fc.breakdown.values()) == pytest.approx(1.0)
    np.testing.assert_allclose(fc.probability_maps.sum(axis=0), 1.0, atol=1e-4)
    # a dense sliding window approximates the tiles' class probabilities
    assert abs(fc.probabilities["a"] - tl.probabilities["a"]) < 0.15
    with pytest.raises(GradCamError, match="CAM only"):
        tiled_heatmaps(cnn, img, tile=64, mode="fullconv", method="gradcam")


def test_tiled_bad_arguments(cnn):
    with pytest.raises(GradCamError, match="Overlap"):
        tiled_heatmaps(cnn, np.zeros((100, 100)), overlap=1.0)
    with pytest.raises(GradCamError, match="2D image"):
        tiled_heatmaps(cnn, np.zeros((5, 100, 100)))
    with pytest.raises(GradCamError, match="Top-k"):
        tiled_heatmaps(cnn, np.zeros((100, 100)), classes=9)


# ----------------------------------------------------------------------------- shift-averaged maps
@pytest.fixture(scope="module")
def box_bundle():
    """A 'network' whose feature map is the input's 8 x 8 block means, one channel, GAP + linear head:
    CAM and Grad-CAM of class 0 are those block means (a known answer at 1/8 of the resolution)."""
    from napari_gradcam.bundle import ModelBundle

    b = ng.build_model("simple_cnn", ["spot", "other"], in_channels=1, input_size=128)

    class BoxNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.AvgPool2d(8)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.classifier = torch.nn.Linear(1, 2)
            with torch.no_grad():
                self.classifier.weight.copy_(torch.tensor([[1.0], [-1.0]]))
                self.classifier.bias.zero_()

        def forward(self, x):
            return self.classifier(self.pool(self.features(x)).flatten(1))

    b.config.mean, b.config.std = [0.0], [1.0]
    return ModelBundle(BoxNet().eval(), b.config)


def _peak(h: np.ndarray) -> np.ndarray:
    return np.array(np.unravel_index(np.argmax(h), h.shape), float)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_shifts_find_a_spot_between_cell_centres(box_bundle, method):
    """One bright 3 x 3 spot at (57, 90): the plain map can only peak at a cell centre (59.5, 91.5);
    averaged over 4 x 4 sub-cell shifts the peak comes to the spot (a sign error in moving the maps
    back would put it ~3 px off the other way)."""
    img = np.zeros((128, 128), np.float32)
    img[56:59, 89:92] = 1.0
    spot = np.array([57.0, 90.0])
    plain = explain(box_bundle, img, method, target="spot")
    assert np.abs(_peak(plain.data) - spot).max() >= 1.5
    fine = explain(box_bundle, img, method, target="spot", shifts=4)
    assert np.abs(_peak(fine.data) - spot).max() <= 1.0
    assert fine.data.shape == img.shape and fine.data.dtype == np.float32
    assert fine.data.max() == pytest.approx(1.0) and fine.data.min() >= 0
    np.testing.assert_array_equal(fine.raw, plain.raw)          # raw stays the unshifted map
    assert fine.score == plain.score and fine.target == "spot"


def test_shifts_one_is_the_plain_map_and_bad_values_are_refused(cnn, image):
    for method in ("cam", "gradcam"):
        np.testing.assert_array_equal(explain(cnn, image, method, shifts=1).data, explain(cnn, image, method).data)
    for bad in (0, 9, -1, 2.5, True, "4"):
        with pytest.raises(GradCamError, match="shifts must be"):
            explain(cnn, image, "gradcam", shifts=bad)
    assert _no_hooks(cnn.model)


def test_shifts_all_classes_and_cam_equals_gradcam(cnn, image):
    """Several targets come from one batch; on a GAP + linear head shifted Grad-CAM = shifted CAM."""
    cams = explain(cnn, image, "cam", target="all", shifts=3)
    grads = explain(cnn, image, "gradcam", target="all", shifts=3)
    assert [h.target for h in cams] == ["a", "b", "c"]
    for c, g in zip(cams, grads):
        assert c.data.shape == image.shape
        np.testing.assert_allclose(c.data, g.data, atol=1e-5)
    assert _no_hooks(cnn.model) and all(p.grad is None for p in cnn.model.parameters())
