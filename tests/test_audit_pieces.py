"""The audit's pieces with known answers: evidence shares, boxes, the counterfactual tests on a model whose
decision is known, the statistics, the clustering against CoRelAy and scikit-learn, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import napari_gradcam as ng
from napari_gradcam.audit.confirm import (
    beyond_control, default_control_box, fill_box, insert_patches, insertion_test, removal_test, verdict,
)
from napari_gradcam.audit.shares import cell_shares, evidence_box, frame_share, normalise_sum, outside_share
from napari_gradcam.audit.spray import eigengap_clusters, find_strategies, knn_affinity, laplacian_spectrum, pooled
from napari_gradcam.errors import DatasetError, OutputError


# ----------------------------------------------------------------------------- shares
def test_shares_of_known_maps():
    g = 32
    maps = np.zeros((3, g, g), np.float32)
    maps[0, 0, 0] = 5.0  # all in the frame, top-left cell
    maps[1, 16, 16] = 1.0  # all in the centre
    maps[2] = 1.0  # uniform
    m = normalise_sum(maps)
    np.testing.assert_allclose(m.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    fs = frame_share(m, 0.125)  # 4 cells of 32 on each edge
    np.testing.assert_allclose(fs, [1.0, 0.0, 1 - (24 * 24) / (32 * 32)], rtol=1e-6)
    cs = cell_shares(m, 4)
    assert cs[0, 0, 0] == pytest.approx(1.0) and cs[1, 2, 2] == pytest.approx(1.0)
    np.testing.assert_allclose(cs[2], np.full((4, 4), 1 / 16), rtol=1e-6)
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True  # the left half
    assert outside_share(m[2], mask) == pytest.approx(0.5, abs=1e-6)
    assert outside_share(m[0], mask) == pytest.approx(0.0, abs=1e-6)
    assert normalise_sum(np.zeros((1, 4, 4))).sum() == 0


def test_evidence_box_of_a_blob():
    m = np.zeros((32, 32), np.float32)
    m[4:10, 20:28] = 1.0
    m[30, 0] = 0.9  # a second, separate peak region is not part of the box
    assert evidence_box(m) == pytest.approx([4 / 32, 20 / 32, 10 / 32, 28 / 32])


# ----------------------------------------------------------------------------- confirmation
class _CornerModel:
    """A model whose class-1 logit is the brightness of the top-left quarter minus that of the rest."""

    @staticmethod
    def bundle():
        import torch
        from torch import nn

        class Corner(nn.Module):
            def forward(self, x):
                corner = x[:, :, :8, :8].mean(dim=(1, 2, 3))
                rest = x.mean(dim=(1, 2, 3))
                z = 40 * (corner - rest - 0.3)
                return torch.stack([-z, z], dim=1)

        return ng.wrap_model(Corner(), classes=["plain", "marked"], input_size=32, in_channels=1, mean=[0.0],
                             std=[1.0])


def _images(n, marked, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = (rng.uniform(0.3, 0.5, (32, 32)) * 255).astype(np.uint8)
        if marked:
            im[1:7, 1:7] = 255
        out.append(im)
    return out


def test_removal_and_insertion_on_a_known_model():
    b = _CornerModel.bundle()
    marked, plain = _images(12, True, 0), _images(15, False, 1)
    assert (ng.predict(b, marked).argmax(1) == 1).all() and (ng.predict(b, plain).argmax(1) == 0).all()
    box = [0.0, 0.0, 0.25, 0.25]
    assert default_control_box(box) == [0.0, 0.75, 0.25, 1.0]
    rem = removal_test(b, marked, box, 1)
    assert (rem["changed"], rem["n"]) == (12, 12) and rem["drop"] > 0.9
    assert rem["control"]["changed"] == 0 and rem["control"]["box"] == [0.0, 0.75, 0.25, 1.0]
    for content in ("each", "median"):
        ins = insertion_test(b, marked, plain, box, 1, content=content)
        assert (ins["moved"], ins["n"]) == (15, 15) and ins["control"]["moved"] == 0
    for fill in ("median", "biharmonic"):
        assert removal_test(b, marked, box, 1, fill=fill)["changed"] >= 11
    v, why = verdict(rem, ins)
    assert v == "likely shortcut" and "removal and insertion" in why and "12/12" in why and "15/15" in why


def test_fill_and_paste_keep_dtype_and_the_rest_of_the_image():
    rng = np.random.default_rng(3)
    im = rng.integers(0, 4000, (40, 50), dtype=np.uint16)
    out = fill_box(im, [0.25, 0.2, 0.5, 0.6])
    assert out.dtype == np.uint16 and out.shape == im.shape
    keep = np.ones(im.shape, bool)
    keep[10:20, 10:30] = False
    assert np.array_equal(out[keep], im[keep]) and not np.array_equal(out[~keep], im[~keep])
    flat = np.full((40, 50), 100, np.uint8)
    for fill in ("harmonic", "biharmonic", "median"):  # a constant fills with the constant
        assert np.array_equal(fill_box(flat, [0.0, 0.2, 0.5, 0.6], fill), flat)
    ramp = np.tile(np.linspace(0, 1, 50), (40, 1))  # harmonic functions are filled exactly (a linear ramp)
    np.testing.assert_allclose(fill_box(ramp, [0.25, 0.2, 0.5, 0.6]), ramp, atol=1e-9)
    noisy = rng.uniform(0.4, 0.6, (40, 50))
    filled = fill_box(noisy, [0.0, 0.0, 0.3, 0.3])  # bounded by its surroundings (maximum principle)
    assert 0.4 <= filled[:12, :15].min() and filled[:12, :15].max() <= 0.6
    donor = np.zeros((20, 20, 3), np.uint8)
    donor[:10, :10] = 255
    (rgb_into_gray,) = insert_patches([donor], [np.zeros((40, 40), np.float32)], [0, 0, 0.5, 0.5])
    assert rgb_into_gray.dtype == np.float32 and rgb_into_gray[:20, :20].min() > 0.9 and rgb_into_gray[20:].max() == 0


def test_beyond_control_is_fishers_one_sided_test():
    from scipy.stats import fisher_exact

    hit, p = beyond_control(9, 20, 2, 20)
    assert p == pytest.approx(fisher_exact([[9, 11], [2, 18]], alternative="greater")[1])
    assert hit == (p < 0.01)
    assert beyond_control(3, 40, 0, 40)[0] is False  # significant or not, 7.5 % is under the minimum effect
    assert beyond_control(0, 0, 0, 0) == (False, 1.0)
    assert verdict(None, None)[0] == "not tested"
    quiet = {"changed": 1, "n": 20, "rate": 0.05, "drop": 0.0, "control": {"changed": 0, "n": 20, "rate": 0.0}}
    assert verdict(quiet, None)[0] == "no evidence"


# ----------------------------------------------------------------------------- clustering
def _three_strategies(n=(60, 40, 20), g=32, seed=0):
    """Sum-normalised maps of three strategies: evidence at the centre, left, or top-left corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:g, 0:g] / g
    centres = [(0.5, 0.5), (0.5, 0.15), (0.08, 0.08)]
    maps, truth = [], []
    for k, (cy, cx) in enumerate(centres):
        for _ in range(n[k]):
            jy, jx = rng.normal(0, 0.03, 2)
            maps.append(np.exp(-((yy - cy - jy) ** 2 + (xx - cx - jx) ** 2) / 0.01) + 0.05 * rng.random((g, g)))
            truth.append(k)
    return normalise_sum(np.array(maps)), np.array(truth)


def test_strategies_found_with_their_number_from_the_eigengap():
    from sklearn.metrics import adjusted_rand_score

    maps, truth = _three_strategies()
    s = find_strategies(maps, max_clusters=8)
    assert s.n_clusters == 3
    assert adjusted_rand_score(truth, s.labels) == pytest.approx(1.0)
    assert [int((s.labels == k).sum()) for k in range(3)] == [60, 40, 20]  # 0: the largest
    assert s.atypical[truth == 2].min() > s.atypical[truth == 0].max()  # the corner strategy is atypical
    assert find_strategies(maps, max_clusters=2).n_clusters <= 2
    assert find_strategies(maps[:5]).n_clusters == 1  # too few to cluster


def test_eigengap_picks_the_first_clear_break():
    assert eigengap_clusters(np.array([0, 0, 0.01, 0.5, 0.55, 0.6, 1.2]), 6) == 3
    assert eigengap_clusters(np.array([0, 0, 0.01, 0.5, 0.55, 0.6, 1.2]), 2) == 2  # at most the maximum
    assert eigengap_clusters(np.array([0, 0.3, 0.31, 0.32]), 3) == 1  # one group
    assert eigengap_clusters(np.array([0, 0, 0, 0.07, 0.17, 0.18, 0.3, 0.31, 0.52]), 8) == 3  # deep gaps ignored


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_clustering_agrees_with_scikit_learn():
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import spectral_embedding
    from sklearn.metrics import adjusted_rand_score

    maps, truth = _three_strategies(seed=5)
    feats = pooled(maps)
    ref = SpectralClustering(n_clusters=3, affinity="nearest_neighbors", n_neighbors=11, random_state=0)
    assert adjusted_rand_score(ref.fit_predict(feats), find_strategies(maps).labels) == pytest.approx(1.0)
    affinity, _ = knn_affinity(feats, 11)
    vals, vecs = laplacian_spectrum(affinity, 4)
    emb = spectral_embedding(affinity, n_components=4, drop_first=False, random_state=0)
    # the same eigenspace: every sklearn eigenvector lies in the span of ours (up to sklearn's D^-1/2 scaling)
    deg = np.asarray(affinity.sum(axis=1)).ravel()
    ours = vecs / np.linalg.norm(vecs, axis=0)
    theirs = emb * np.sqrt(deg)[:, None]
    theirs /= np.linalg.norm(theirs, axis=0)
    residual = theirs - ours @ (ours.T @ theirs)
    assert np.abs(residual).max() < 1e-4
    assert vals[0] == pytest.approx(0.0, abs=1e-8)


def test_spectrum_agrees_with_corelay():
    pytest.importorskip("corelay")
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    maps, _ = _three_strategies(seed=7)
    feats = pooled(maps).astype(np.float64)
    dist = SciPyPDist(metric="euclidean")(feats)
    theirs_aff = SparseKNN(n_neighbors=11, symmetric=True)(dist)
    ours_aff, _ = knn_affinity(feats, 11)
    assert ((ours_aff > 0) != (theirs_aff > 0)).nnz == 0  # the same neighbour graph
    lap = SymmetricNormalLaplacian()(theirs_aff)
    their_vals, _ = EigenDecomposition(n_eigval=6, which="LA")(lap)
    our_vals, _ = laplacian_spectrum(theirs_aff, 6)
    np.testing.assert_allclose(np.sort(their_vals), our_vals, atol=1e-6)


def test_clustering_stays_sparse_for_many_maps():
    """No N x N matrix: the affinity of 3,000 maps holds O(N k) entries."""
    maps, _ = _three_strategies((1500, 1000, 500), g=16)
    affinity, dist = knn_affinity(pooled(maps), 30)
    assert affinity.nnz <= 2 * 30 * 3000 and dist.nnz == 30 * 3000
    assert find_strategies(maps, max_clusters=6).n_clusters == 3


# ----------------------------------------------------------------------------- sources and bad input
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained two-class model and a folder with good and bad files."""
    from PIL import Image

    b = ng.build_model("simple_cnn", classes=["a", "b"], in_channels=1, input_size=32)
    root = tmp_path_factory.mktemp("bad") / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png at all")
    (root / "a" / "notes.txt").write_text("hello")
    masks = root.parent / "masks"
    for c in ("a", "b"):
        (masks / c).mkdir(parents=True)
        for i in range(6):
            shape = (40, 36) if i != 1 else (20, 20)  # one mask of another size
            if not (c == "b" and i == 2):  # one mask missing
                Image.fromarray(np.full(shape, 255, np.uint8)).save(masks / c / f"{c}{i}.png")
    return b, root, masks


def test_bad_files_are_listed_not_fatal(tiny, tmp_path):
    b, root, masks = tiny
    a = ng_audit(b, root, masks=masks, out=tmp_path / "out")
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in a.findings["skipped"]}
    assert "could not be read" in skipped["broken.png"]
    assert "not an image file type" in skipped["notes.txt"]
    assert "20x20" in skipped["a1.png"] and "20x20" in skipped["b1.png"]
    assert "no mask" in skipped["b2.png"]
    ok = a.table[a.table["status"] == "ok"]
    share = ok["outside_mask_share"]  # full masks: nothing outside (NaN where the untrained model's map is empty)
    assert len(ok) == 12 - 3 and share.notna().any() and np.allclose(share.dropna(), 0.0, atol=1e-6)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "broken.png" in html and "no mask" in html


def ng_audit(b, source, **kw):
    from napari_gradcam.audit import audit

    return audit(b, source, batch_size=4, **kw)


def test_mismatches_are_one_sentence_before_any_work(tiny, tmp_path):
    from PIL import Image

    b, root, _ = tiny
    other = tmp_path / "other"
    (other / "c").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other / "c" / "x.png")
    with pytest.raises(DatasetError, match=r"class\(es\) 'c' .* not classes of the model"):
        ng_audit(b, other)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 200
    with pytest.raises(DatasetError, match="one channel"):
        ng_audit(b, [colour])
    with pytest.raises(DatasetError, match="No folder or CSV"):
        ng_audit(b, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images"):
        ng_audit(b, tmp_path / "empty")
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputError, match="--resume"):
        ng_audit(b, root, out=tmp_path / "exists")


def test_csv_and_flat_folder_sources(tiny, tmp_path):
    from napari_gradcam.audit.sources import open_source

    b, root, _ = tiny
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + f"{root}/a/a0.png,a\n{root}/b/b0.png,\n{root}/b/b1.png,b\n")
    src = open_source(csv, b.classes)
    assert [e.label for e in src.entries] == [0, None, 1]
    with pytest.raises(DatasetError, match="class folders"):
        open_source(root, b.classes, labels=["a"])
    flat = open_source(root / "a", b.classes)
    assert all(e.label is None for e in flat.entries) and len(flat.entries) == 7  # broken.png listed, read later
    assert any("notes.txt" in p for p, _ in flat.skipped)


def test_mask_stack_for_arrays(tiny):
    b = tiny[0]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[:, :, :16] = 2  # a Labels layer's values: the left half
    masks[3] = 1  # all inside
    a = ng_audit(b, images, masks=masks, confirm=False)
    g = a.maps("grid")
    left = g[:, :, :16].sum(axis=(1, 2))
    empty = ~(g.sum(axis=(1, 2)) > 0)  # an untrained model may explain an image with an empty map: no share
    expected = np.where(empty, np.nan, 1 - left)
    expected[3] = np.nan if empty[3] else 0.0  # all inside
    np.testing.assert_allclose(a.table["outside_mask_share"].to_numpy(), expected, atol=1e-5)
    with pytest.raises(DatasetError, match="one mask per image"):
        ng_audit(b, images, masks=masks[:3])
    bad = [np.zeros((8, 8), np.uint8)] * 6
    a = ng_audit(b, images, masks=bad, confirm=False)
    assert (a.table["status"].str.contains("the mask is 8x8")).all()


def test_an_empty_map_has_no_shares():
    """A map with no evidence anywhere is not '0 % in the frame / outside the mask': its shares are NaN."""
    from napari_gradcam.audit.shares import cell_shares, frame_share, outside_share

    maps = np.zeros((2, 16, 16), np.float32)
    maps[1, 0, 0] = 1.0  # all in the top-left corner
    assert np.isnan(frame_share(maps)[0]) and frame_share(maps)[1] == pytest.approx(1.0)
    cells = cell_shares(maps)
    assert np.isnan(cells[0]).all() and cells[1, 0, 0] == pytest.approx(1.0)
    mask = np.ones((32, 32), bool)
    assert np.isnan(outside_share(maps[0], mask)) and outside_share(maps[1], mask) == pytest.approx(0.0)
