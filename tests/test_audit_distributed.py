"""The explanation pass on a two-worker dask.distributed LocalCluster gives exactly the one-process results."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_gradcam as ng

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("dist") / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 255, (36, 36), dtype=np.uint8)
            if c == "b":
                img[2:10, 2:10] = 255
            Image.fromarray(img).save(root / c / f"{c}{i:02d}.png")
    return root


def test_two_workers_equal_one_process(folder, tmp_path, torch_one_thread):
    import torch

    from napari_gradcam.audit import audit
    from napari_gradcam.cli import main

    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", classes=["a", "b"], in_channels=1, input_size=32)
    model = tmp_path / "m.safetensors"
    ng.save_model(b, model)
    one = audit(model, folder, out=tmp_path / "one", batch_size=8)
    assert main(["audit", str(model), str(folder), "--out", str(tmp_path / "two"), "--batch-size", "8",
                 "--workers", "2", "-q"]) == 0
    from napari_gradcam.audit import Audit

    two = Audit.load(tmp_path / "two")
    for name in ("probs", "grid", "layer_maps", "frame", "cells"):
        np.testing.assert_array_equal(one.maps(name), two.maps(name), err_msg=name)
    assert (tmp_path / "one" / "images.csv").read_text() == (tmp_path / "two" / "images.csv").read_text()
    f1 = json.loads((tmp_path / "one" / "findings.json").read_text())
    f2 = json.loads((tmp_path / "two" / "findings.json").read_text())
    f1.pop("model"), f2.pop("model")
    assert f1 == f2


def test_an_existing_scheduler(folder, tmp_path, torch_one_thread):
    """``--scheduler ADDRESS`` runs the pass on a cluster that is already up (here an in-process one)."""
    import torch
    from distributed import LocalCluster

    from napari_gradcam.audit import Audit, audit
    from napari_gradcam.cli import main

    torch.manual_seed(1)
    b = ng.build_model("simple_cnn", classes=["a", "b"], in_channels=1, input_size=32)
    model = tmp_path / "m.safetensors"
    ng.save_model(b, model)
    one = audit(model, folder, batch_size=8, confirm=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main(["audit", str(model), str(folder), "--out", str(tmp_path / "s"), "--batch-size", "8",
                     "--scheduler", cluster.scheduler_address, "--no-confirm", "-q"]) == 0
    np.testing.assert_array_equal(Audit.load(tmp_path / "s").maps("probs"), one.maps("probs"))
    assert main(["audit", str(model), str(folder), "--out", str(tmp_path / "t"), "--workers", "2", "--scheduler",
                 "tcp://127.0.0.1:1", "-q"]) == 2
