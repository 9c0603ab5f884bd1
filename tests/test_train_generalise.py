"""Augmentation that keeps image statistics: on frame-filling films (no dark border to hide a zero fill)
validation accuracy follows training accuracy, and the mismatch guard speaks only when training and
validation inputs really differ."""

from __future__ import annotations

import numpy as np
import pytest

from frame_phantoms import write_frame_filling
from napari_gradcam.data import Augmentation, scan_folder
from napari_gradcam.train import TrainConfig, evaluate_model, run_training

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return write_frame_filling(tmp_path_factory.mktemp("frames") / "data", n_per_class=120, size=64, seed=0)


def _cfg(films, out, **kw):
    return TrainConfig(data_dir=str(films), out=str(out), image_size=48, batch_size=16, lr=3e-3, device="cpu",
                       max_minutes=0, **kw)


def test_augmentation_keeps_the_statistics_of_frame_filling_films(films):
    import torch

    from napari_gradcam.data import ImageDataset

    ds = ImageDataset(scan_folder(films), 1, 48, [0.5], [0.25])
    x = torch.stack([ds.unit(i) for i in range(len(ds))])  # unit range, as augmentation gets them
    gen = torch.Generator().manual_seed(0)
    ours = torch.cat([Augmentation(rotation=10, translate=0.08, zoom=0.12)(x, generator=gen) for _ in range(4)])
    zeros = torch.cat([Augmentation(rotation=10, translate=0.08, zoom=0.12, fill="zeros")(x, generator=gen)
                       for _ in range(4)])
    mean, dark = float(x.mean()), float((x < 0.02).float().mean())
    assert abs(float(ours.mean()) - mean) < 0.01 and float((ours < 0.02).float().mean()) < dark + 0.005
    assert float(zeros.mean()) < mean - 0.03 and float((zeros < 0.02).float().mean()) > dark + 0.05
    # a constant image stays constant under any geometry: nothing comes from outside the image
    flat = torch.full((8, 1, 24, 24), 0.6)
    assert torch.allclose(Augmentation(rotation=30, translate=0.2, zoom=0.3, brightness=0, contrast=0, blur=1.5)(flat),
                          flat)
    # intensity changes are centred on the image's own level: on average they keep its mean
    jitter = Augmentation(0, 0, 0, brightness=0.2, contrast=0.3, gamma=0.3, blur=1.0)
    means = torch.stack([jitter(x[:64], generator=gen).mean() for _ in range(20)])
    assert abs(float(means.mean()) - float(x[:64].mean())) < 0.02


def test_validation_follows_training_with_the_default_augmentation(films, tmp_path):
    events = []
    res = run_training(_cfg(films, tmp_path / "m.safetensors", epochs=10), callback=events.append)
    assert not [e for e in events if e.kind == "warning"]
    best = next(h for h in res.history if h["epoch"] == res.best_epoch)
    assert best["accuracy"] >= 0.9 and best["roc_auc"] >= 0.95, res.history
    train_split, _ = scan_folder(films).split(0.2, seed=0)
    probs, labels, _ = evaluate_model(res.bundle, train_split)
    train_accuracy = float(np.mean(probs.argmax(1) == labels))
    assert train_accuracy - best["accuracy"] <= 0.1, (train_accuracy, best["accuracy"])


def test_mismatch_guard_names_the_cause_once(films, tmp_path, monkeypatch, capsys):
    """A deliberately mismatched pipeline: every training image darkened to a fifth, validation as is."""
    import napari_gradcam.train.run as run
    from napari_gradcam.cli import main

    monkeypatch.setattr(run, "make_augmentation", lambda cfg: (lambda x, generator=None: x * 0.2))
    code = main(["train", str(films), "--out", str(tmp_path / "m.safetensors"), "--image-size", "48", "--epochs",
                 "8", "--batch-size", "16", "--lr", "3e-3", "--device", "cpu", "--max-minutes", "0", "-q"])
    assert code == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("warning: Validation accuracy 0.500 is the share of class ")
    assert "training and validation inputs likely differ" in warnings[0]
