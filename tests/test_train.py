"""Training as a generator: the loss falls, stopping keeps a loadable checkpoint, resuming counts on."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari_gradcam as ng
from napari_gradcam.errors import DatasetError, GradCamError
from napari_gradcam.train import (
    EVENT_KINDS,
    TrainConfig,
    TrainEvent,
    lr_factor,
    optimizer_state_path,
    run_training,
    train,
)


pytestmark = pytest.mark.usefixtures("torch_one_thread_module")  # tiny models: no OpenMP spinning


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("train") / "data", n_per_class=20, size=40, seed=11)


def _cfg(phantoms, out, **kw):
    base = dict(data_dir=str(phantoms), out=str(out), image_size=32, epochs=2, batch_size=16, lr=3e-3,
                augment=False, patience=None, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_and_events_are_complete(phantoms, tmp_path):
    cfg = _cfg(phantoms, tmp_path / "m.safetensors", epochs=4)
    events = list_events = []
    gen = train(cfg)
    while True:
        try:
            list_events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    kinds = [e.kind for e in events]
    assert set(kinds) <= set(EVENT_KINDS)
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch") == 4
    batches = [e for e in events if e.kind == "batch"]
    assert all(isinstance(e, TrainEvent) for e in events)
    assert batches[0].n_batches == len(batches) // 4 and batches[0].n_epochs == 4
    assert all(e.images_per_s and e.images_per_s > 0 for e in batches)
    progress = [e.progress for e in batches]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    # the loss falls: first batch vs last epoch's mean
    first = batches[0].loss
    last_epoch = [e for e in events if e.kind == "epoch"][-1]
    assert last_epoch.metrics["train_loss"] < 0.8 * first, (first, last_epoch.metrics["train_loss"])
    for key in ("val_loss", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "lr"):
        assert key in last_epoch.metrics
    # results and files
    assert result.epochs_done == 4 and not result.stopped and len(result.history) == 4
    assert result.best_path.is_file() and result.last_path.is_file()
    assert result.last_path.name == "m.last.safetensors"
    assert optimizer_state_path(result.last_path).is_file()
    b = ng.load_model(result.best_path, device="cpu")
    assert b.classes == ["covid", "normal", "pneumonia"] and b.input_size == 32
    summary = b.config.training
    assert summary["epochs_done"] == result.best_epoch and summary["data"] == str(phantoms)
    assert summary["class_counts"]["train"]["covid"] + summary["class_counts"]["val"]["covid"] == 20
    assert summary["split_seed"] == 0 and summary["recipe"]["arch"] == "simple_cnn"
    assert len(summary["history"]) == result.best_epoch
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    # the returned bundle is the best model
    assert result.bundle is not None and result.bundle.model.training is False
    assert result.bundle.config.training["best_epoch"] == result.best_epoch


def test_stop_mid_epoch_keeps_last_checkpoint(phantoms, tmp_path):
    out = tmp_path / "m.safetensors"
    calls = {"n": 0}
    stop = threading.Event()
    cfg = _cfg(phantoms, out, epochs=3, stop_event=stop)
    seen = []
    gen = train(cfg)
    for ev in gen:
        seen.append(ev)
        if ev.kind == "batch" and ev.epoch == 2 and ev.batch == 2:
            stop.set()
            calls["n"] += 1
    assert seen[-1].kind == "stopped" and seen[-1].epoch == 2
    assert "epoch 1" in seen[-1].message
    # no batch of epoch 2 ran after the request
    assert max(e.batch for e in seen if e.kind == "batch" and e.epoch == 2) == 2
    last = ng.load_model(tmp_path / "m.last.safetensors", device="cpu")
    assert last.config.training["epochs_done"] == 1


def test_close_generator_mid_epoch(phantoms, tmp_path):
    cfg = _cfg(phantoms, tmp_path / "m.safetensors", epochs=3)
    gen = train(cfg)
    for ev in gen:
        if ev.kind == "batch" and ev.epoch == 2 and ev.batch == 1:
            gen.close()
            break
    last = ng.load_model(tmp_path / "m.last.safetensors", device="cpu")
    assert last.config.training["epochs_done"] == 1


def test_stop_before_any_epoch_writes_nothing(phantoms, tmp_path):
    cfg = _cfg(phantoms, tmp_path / "m.safetensors", should_stop=lambda: True)
    res = run_training(cfg)
    assert res.stopped and res.epochs_done == 0 and res.bundle is None and res.best_path is None
    assert not list(tmp_path.iterdir())


def test_resume_continues_epoch_count(phantoms, tmp_path):
    out = tmp_path / "m.safetensors"
    first = run_training(_cfg(phantoms, out, epochs=1, augment=True))
    assert first.epochs_done == 1
    events = []
    res = run_training(_cfg(phantoms, out, epochs=3, resume=str(tmp_path / "m.last.safetensors")),
                       callback=events.append)
    start = events[0]
    assert start.kind == "start" and "resumed" in start.message and "optimizer state restored" in start.message
    epochs = [e.epoch for e in events if e.kind == "epoch"]
    assert epochs == [2, 3]
    assert res.epochs_done == 3 and [h["epoch"] for h in res.history] == [1, 2, 3]
    last = ng.load_model(tmp_path / "m.last.safetensors", device="cpu")
    assert last.config.training["epochs_done"] == 3
    # the same held-out split as the first run
    assert last.config.training["class_counts"] == first.summary["class_counts"]
    # nothing left to do
    again = run_training(_cfg(phantoms, out, epochs=3, resume=str(tmp_path / "m.last.safetensors")))
    assert again.epochs_done == 3 and again.reason == "already done"


def test_options_sampler_freeze_early_stop_schedule(phantoms, tmp_path):
    res = run_training(_cfg(phantoms, tmp_path / "a.safetensors", epochs=3, class_weighting="sampler",
                            freeze_epochs=1, optimizer="sgd", schedule="step", warmup_epochs=0.5,
                            augment=True, flips=True, steps_per_epoch=3, patience=1, monitor="val_loss",
                            lr=1e-9, cache=False))
    assert res.history[0]["frozen_trunk"] is True and res.history[1]["frozen_trunk"] is False
    assert res.reason in ("early stopping", "finished")
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 0, "cosine") < 0.02
    assert lr_factor(80, 100, 0, "step") == pytest.approx(0.01)


def test_frozen_trunk_does_not_change(phantoms, tmp_path):
    import torch

    torch.manual_seed(0)
    cfg = _cfg(phantoms, tmp_path / "f.safetensors", epochs=1, freeze_epochs=1, steps_per_epoch=2)
    before = ng.build_model("simple_cnn", ["covid", "normal", "pneumonia"], input_size=32).model.state_dict()
    res = run_training(cfg)
    after = res.bundle.model.state_dict()
    conv = "features.block1.conv1.weight"
    assert torch.equal(before[conv], after[conv])  # same seed, frozen: identical trunk
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


@pytest.mark.parametrize(
    "kw, words",
    [({"epochs": 0}, "epochs"), ({"lr": -1}, "learning rate"), ({"optimizer": "lion"}, "optimizer"),
     ({"out": "m.pt"}, ".safetensors"), ({"arch": "resnet9000"}, "Unknown architecture"),
     ({"data_dir": "/nonexistent/folder"}, "No data folder")],
)
def test_bad_options_are_one_sentence(phantoms, tmp_path, kw, words):
    base = {"out": str(tmp_path / "m.safetensors")}
    base.update(kw)
    cfg = _cfg(phantoms, **{"out": base.pop("out")}, **base)
    with pytest.raises(GradCamError) as e:
        next(train(cfg))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_single_class_data_is_refused(tmp_path):
    from napari_gradcam.phantoms import write_dataset

    root = write_dataset(tmp_path / "one", n_per_class=4, size=24, classes=("normal",))
    with pytest.raises(DatasetError, match="one class"):
        next(train(TrainConfig(data_dir=str(root), out=str(tmp_path / "m.safetensors"), image_size=16)))


def test_training_is_reproducible(phantoms, tmp_path):
    kw = dict(epochs=1, steps_per_epoch=3, augment=True)
    a = run_training(_cfg(phantoms, tmp_path / "a.safetensors", **kw))
    b = run_training(_cfg(phantoms, tmp_path / "b.safetensors", **kw))
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)
    pa = np.concatenate([v.numpy().ravel() for v in a.bundle.model.state_dict().values()])
    pb = np.concatenate([v.numpy().ravel() for v in b.bundle.model.state_dict().values()])
    assert np.allclose(pa, pb, atol=1e-5)


def test_time_budget_stops_between_epochs(phantoms, tmp_path):
    res = run_training(_cfg(phantoms, tmp_path / "t.safetensors", epochs=5, max_minutes=1e-6, steps_per_epoch=1))
    assert res.reason == "time limit" and res.epochs_done == 1 and res.best_path.is_file()
