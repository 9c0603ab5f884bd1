"""Large images: zarr in, lazy dask tiles, a dask.distributed LocalCluster, zarr out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam.engine import tiled_heatmaps
from napari_gradcam.phantoms import make_mosaic

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    bundle = ng.build_model("simple_cnn", ["normal", "pneumonia", "covid"], 1, 64)
    image, _ = make_mosaic((700, 900), tile=256, seed=1)
    path = tmp_path_factory.mktemp("zarr") / "image.zarr"
    z = zarr.open(str(path), mode="w", shape=image.shape, chunks=(256, 256), dtype=image.dtype)
    z[:] = image
    ref = tiled_heatmaps(bundle, image, tile=128, overlap=0.5)
    return bundle, image, path, ref


def test_zarr_input_stays_lazy_until_computed(setup):
    bundle, image, path, ref = setup
    lazy = tiled_heatmaps(bundle, da.from_zarr(str(path)), tile=128, overlap=0.5, chunk=300)
    assert lazy.lazy and lazy.heatmaps.numblocks == (1, 3, 3)
    np.testing.assert_allclose(lazy.heatmaps[:, 250:450, 280:620].compute(), ref.heatmaps[:, 250:450, 280:620], atol=1e-5)
    assert lazy.breakdown == pytest.approx(ref.breakdown, abs=1e-4)
    assert lazy.probabilities == pytest.approx(ref.probabilities, abs=1e-4)


def test_to_zarr_one_pass(setup, tmp_path):
    bundle, image, path, ref = setup
    lazy = tiled_heatmaps(bundle, da.from_zarr(str(path)), tile=128, overlap=0.5, chunk=300)
    stored = lazy.to_zarr(tmp_path / "heat.zarr")
    assert zarr.open(str(tmp_path / "heat.zarr")).shape == (3, 700, 900)
    np.testing.assert_allclose(stored.heatmaps.compute(), ref.heatmaps, atol=2e-3)  # float16 storage
    assert stored.breakdown == pytest.approx(ref.breakdown, abs=1e-4)


def test_to_zarr_replaces_a_store_only_when_complete(setup, tmp_path, monkeypatch):
    """A failure while writing leaves the previous store whole and no temporary folder behind; a success
    replaces it; a file at the path is refused."""
    from napari_gradcam.errors import OutputError

    bundle, image, path, ref = setup
    lazy = tiled_heatmaps(bundle, da.from_zarr(str(path)), tile=128, overlap=0.5, chunk=300)
    out = tmp_path / "heat.zarr"
    zarr.open(str(out), mode="w", shape=(2, 5), dtype="f4")[:] = 7.0  # a previous store
    real = da.Array.to_zarr

    def fail_midway(self, url, *args, **kwargs):
        real(self[:, :10], url, *args, **{**kwargs, "compute": True})  # a partial store, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(da.Array, "to_zarr", fail_midway)
    with pytest.raises(OutputError, match="previous"):
        lazy.to_zarr(out)
    monkeypatch.undo()
    assert zarr.open(str(out)).shape == (2, 5) and float(zarr.open(str(out))[0, 0]) == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.zarr"]
    stored = lazy.to_zarr(out)
    assert zarr.open(str(out)).shape == (3, 700, 900) and stored.breakdown == pytest.approx(ref.breakdown, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.zarr"]
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(OutputError, match="not a folder"):
        lazy.to_zarr(tmp_path / "file.zarr")


def test_local_cluster_gives_the_same_result(setup):
    distributed = pytest.importorskip("distributed")
    bundle, image, path, ref = setup
    lazy = tiled_heatmaps(bundle, da.from_zarr(str(path)), tile=128, overlap=0.5, chunk=300)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            heat = lazy.heatmaps.compute()
    np.testing.assert_allclose(heat, ref.heatmaps, atol=1e-5)
