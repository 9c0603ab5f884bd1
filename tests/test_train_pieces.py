"""The pieces of the trainer, each alone: batches, one epoch, precise BatchNorm, validation guard, stopping
policies, checkpoint writer, decision threshold, the split, and the options of the train command."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import napari_gradcam as ng
from napari_gradcam.decision import choose_threshold, decision_threshold, predicted_classes
from napari_gradcam.train import MismatchGuard, TrainConfig, epoch_batches, optimizer_state_path, run_training
from napari_gradcam.train.checkpoints import CheckpointWriter, read_optimizer_state
from napari_gradcam.train.distributed import Comm
from napari_gradcam.train.epoch import StepParts, recalibrate_batchnorm, run_epoch
from napari_gradcam.train.setup import make_optimisation
from napari_gradcam.train.stopping import BestTracker, EarlyStopping, TimeBudget

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("pieces") / "data", n_per_class=10, size=40, seed=3,
                         classes=("normal", "pneumonia"))


# ----------------------------------------------------------------------------- batches
def test_batches_share_an_epoch_between_processes():
    labels = np.array([0] * 30 + [1] * 71)
    one = epoch_batches(101, 8, labels, "balanced", seed=1, epoch=2, limit=None)
    assert np.array_equal(np.sort(np.concatenate(one)), np.arange(101))  # a permutation, tiny last batch kept (5 >= 2)
    assert [len(b) for b in one][-1] == 5
    assert all(np.array_equal(a, b) for a, b in zip(one, epoch_batches(101, 8, labels, "balanced", 1, 2, None)))
    shards = [epoch_batches(101, 8, labels, "balanced", 1, 2, None, Comm(r, 3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every process takes the same number of steps
    seen = np.concatenate([np.concatenate(s) for s in shards])
    assert set(seen) == set(range(101)) and len(seen) == 102  # DistributedSampler pads 101 to 3 x 34
    weighted = [np.concatenate(epoch_batches(101, 8, labels, "sampler", 1, 2, None, Comm(r, 2))) for r in range(2)]
    assert len(weighted[0]) == len(weighted[1]) == 51 and abs(np.mean(labels[np.concatenate(weighted)]) - 0.5) < 0.15
    assert len(epoch_batches(101, 8, labels, "none", 1, 2, limit=3)) == 3


# ----------------------------------------------------------------------------- one epoch, alone
def _parts(seed=0):
    import torch

    torch.manual_seed(seed)
    bundle = ng.build_model("simple_cnn", ["a", "b"], input_size=16, device="cpu")
    cfg = TrainConfig(data_dir="x", lr=1e-2)
    optim = make_optimisation(cfg, bundle.model, torch.device("cpu"))
    return bundle, StepParts(bundle.model, optim, torch.device("cpu"), torch.zeros(1, 1, 1, 1),
                                   torch.ones(1, 1, 1, 1))


def _source(n=6, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(8) % 2
    return [((torch.rand(8, 1, 16, 16, generator=g) * 0.5 + 0.5 * y.view(8, 1, 1, 1)), y) for _ in range(n)]


def test_one_epoch_alone_fits_and_stops():
    _, parts = _parts()
    lrs = []
    steps = run_epoch(parts, iter(_source()), 6, epoch=1, global_step=10, base_lr=1e-2,
                      learning_rate=lambda step, share: lrs.append((step, share)) or 1e-2, clock=lambda: None,
                      stop_requested=lambda: False, fail=lambda e, b: AssertionError(f"{b}: {e}"))
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            stats = done.value
            break
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6] and lrs == [(s, None) for s in range(10, 16)]
    assert stats.global_step == 16 and stats.seen == 48 and stats.stopped_before is None
    assert stats.loss == pytest.approx(np.mean([s[1] for s in seen[-1:]]))
    # a stop request before the third batch: two steps taken, nothing after
    _, parts = _parts()
    calls = iter([False, False, True])
    steps = run_epoch(parts, iter(_source()), 6, 1, 0, 1e-2, lambda s, c: 1e-2, lambda: 0.5,
                      lambda: next(calls), lambda e, b: AssertionError(str(e)))
    assert [s[0] for s in steps] == [1, 2]
    # a failure names the batch (through ``fail``) and keeps the original exception as the cause
    _, parts = _parts()

    def broken():
        yield from _source(1)
        raise OSError("disk gone")

    with pytest.raises(RuntimeError, match="batch 2: disk gone") as err:
        list(run_epoch(parts, broken(), 6, 1, 0, 1e-2, lambda s, c: 1e-2, lambda: None, lambda: False,
                       lambda e, b: RuntimeError(f"batch {b + 1}: {e}")))
    assert isinstance(err.value.__cause__, OSError)


def test_precise_batchnorm_is_the_average_of_batch_statistics():
    import torch

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(1)
    _, parts = _parts()
    parts.model = torch.nn.Sequential(bn)
    batches = [(torch.randn(4, 1, 3, 3) * (k + 1) + k, torch.zeros(4)) for k in range(3)]
    assert recalibrate_batchnorm(parts, iter(batches), 2) == 2
    x = [b[0] for b in batches[:2]]
    assert bn.running_mean.item() == pytest.approx(np.mean([float(t.mean()) for t in x]), abs=1e-5)
    assert bn.running_var.item() == pytest.approx(np.mean([float(t.var()) for t in x]), abs=1e-4)  # unbiased
    assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 2
    assert recalibrate_batchnorm(parts, iter(batches), 0) == 0


# ----------------------------------------------------------------------------- stopping policies
def test_best_tracker_early_stopping_and_time_budget():
    t = BestTracker("val_loss", min_delta=0.01)
    assert [t.update({"val_loss": v}, e) for e, v in enumerate([0.5, 0.4, 0.395, 0.45, 0.3], 1)] == [
        True, True, False, False, True]
    assert (t.best, t.epoch, t.bad_epochs) == (0.3, 5, 0)
    auc = BestTracker("roc_auc")
    assert auc.update({"roc_auc": None, "balanced_accuracy": 0.7}, 1) and auc.best == 0.7  # AUC undefined
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.5, 0.4, 0.45, 0.47], 1)]
    resumed = BestTracker.resume("val_loss", 0.0, history, 0.4, 2)
    assert resumed.bad_epochs == 2 and EarlyStopping(2).should_stop(resumed) and not EarlyStopping(3).should_stop(resumed)
    assert not EarlyStopping(None).should_stop(resumed)
    budget = TimeBudget(100.0, start=20.0)
    assert budget.fraction(60.0) == pytest.approx(0.5) and budget.room_for(70.0, 30.0) and not budget.room_for(71, 30)
    assert TimeBudget(None).fraction(1e9) is None and TimeBudget(None).room_for(1e9, 1e9)


# ----------------------------------------------------------------------------- the mismatch guard
def _epoch(acc, auc, loss, cm):
    return {"accuracy": acc, "roc_auc": auc, "train_loss": loss, "confusion_matrix": cm}


def test_mismatch_guard_speaks_once_after_two_stuck_epochs():
    labels = np.array([0] * 10 + [1] * 30)
    stuck = _epoch(0.75, 0.95, 0.6, [[0, 10], [0, 30]])  # everything called class 1, the majority (75 %)
    good = _epoch(0.9, 0.95, 0.2, [[8, 2], [2, 28]])
    g = MismatchGuard()
    assert g.check(stuck, labels, ["n", "p"]) is None  # once may be an early epoch: not yet
    msg = g.check(stuck, labels, ["n", "p"])
    assert msg.startswith("Validation accuracy 0.750 is the share of class 'p' (nearly every image is called 'p'), "
                          "although ROC AUC is 0.95") and "inputs likely differ" in msg
    assert "\n" not in msg and g.check(stuck, labels, ["n", "p"]) is None  # said once
    g = MismatchGuard()
    assert [g.check(m, labels, ["n", "p"]) for m in (stuck, good, stuck, good)] == [None] * 4
    minority = _epoch(0.25, 0.9, 0.1, [[10, 0], [30, 0]])  # all called the minority class: shifted the other way
    g = MismatchGuard()
    assert g.check(minority, labels, ["n", "p"]) is None
    assert g.check(minority, labels, ["n", "p"]).startswith("Validation accuracy 0.250 is the share of class 'n' ")
    fits = _epoch(0.75, 0.55, 0.1, [[0, 10], [0, 30]])
    g = MismatchGuard()
    assert g.check(fits, labels, ["n", "p"]) is None and "training loss is 0.100" in g.check(fits, labels, ["n", "p"])
    unsure = _epoch(0.75, 0.6, 0.6, [[0, 10], [0, 30]])  # stuck, but neither ranks well nor fits: no claim
    g = MismatchGuard()
    assert [g.check(unsure, labels, ["n", "p"]) for _ in range(3)] == [None] * 3


# ----------------------------------------------------------------------------- checkpoints alone
def test_checkpoint_writer_pairs_model_and_optimizer(tmp_path):
    import torch

    bundle, parts = _parts()
    best, last = tmp_path / "m.safetensors", tmp_path / "m.last.safetensors"
    w = CheckpointWriter(best, last)
    assert w.kept() == "no epoch had finished, so no model was written"
    w.save(last, bundle, lambda stamp: {"epochs_done": 3, "checkpoint_id": stamp}, parts.optimisation.state(7), 3)
    summary = ng.load_model(last).config.training
    state, note = read_optimizer_state(last, summary, 3)
    assert note == "optimizer state restored" and state["global_step"] == 7 and state["epochs_done"] == 3
    assert state["checkpoint_id"] == summary["checkpoint_id"] and w.last_epoch == 3 and not w.best_written
    assert w.kept() == f"the checkpoint of epoch 3 in {last} is intact; resume from it"
    w.save(best, bundle, lambda stamp: {"epochs_done": 3, "checkpoint_id": stamp}, parts.optimisation.state(7), 3)
    assert w.best_written and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.last.optim.pt", "m.last.safetensors", "m.optim.pt", "m.safetensors"]
    # the sidecar of the other file does not belong to this one
    optimizer_state_path(last).write_bytes(optimizer_state_path(best).read_bytes())
    state, note = read_optimizer_state(last, summary, 3)
    assert state is None and "belongs to another checkpoint" in note
    optimizer_state_path(last).unlink()
    assert read_optimizer_state(last, summary, 3) == (None, "optimizer restarted (no saved optimizer state)")
    assert torch.load(optimizer_state_path(best), weights_only=True)["optimizer"]["param_groups"]


# ----------------------------------------------------------------------------- decision threshold
def test_threshold_known_answers():
    p1 = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    probs = np.stack([1 - p1, p1], 1)
    y = np.array([0, 0, 0, 1, 1, 1])
    t = choose_threshold(y, probs)
    assert 0.3 < t <= 0.6 and predicted_classes(probs, t).tolist() == y.tolist()
    assert math.log(t / (1 - t)) == pytest.approx((math.log(0.3 / 0.7) + math.log(0.6 / 0.4)) / 2, abs=0.06)  # mid
    y2 = np.array([0, 0, 0, 0, 1, 1])  # the negative at 0.6: the best cut is above it
    assert 0.6 < choose_threshold(y2, probs) <= 0.7
    assert choose_threshold(np.zeros(6), probs) is None and choose_threshold([0, 1, 2], np.eye(3)) is None
    assert predicted_classes(np.eye(3)).tolist() == [0, 1, 2] and predicted_classes(probs[0]).item() == 0


def test_threshold_and_source_size_are_stored_and_used(phantoms, tmp_path, capsys):
    from napari_gradcam.cli import main
    from napari_gradcam.data import scan_folder
    from napari_gradcam.metrics import classification_report
    from napari_gradcam.train import evaluate_model

    res = run_training(TrainConfig(data_dir=str(phantoms), out=str(tmp_path / "m.safetensors"), image_size=32,
                                   epochs=2, batch_size=8, device="cpu", max_minutes=0))
    b = ng.load_model(res.best_path)
    summary = b.config.training
    assert summary["source_size"] == 40  # the phantoms are 40 x 40
    row = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    assert summary["threshold"] == row["threshold"] and summary["threshold_class"] == "pneumonia"
    t = decision_threshold(b)
    assert t == summary["threshold"] and 0 < t < 1
    probs, y, _ = evaluate_model(b, scan_folder(phantoms))
    expect = classification_report(y, probs, b.classes, threshold=t)
    assert main(["evaluate", str(res.best_path), str(phantoms), "--json", str(tmp_path / "r.json"), "-q"]) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["threshold"] == t and report["confusion_matrix"] == expect["confusion_matrix"]
    assert "decision           pneumonia where p >= " in capsys.readouterr().out
    b.config.training["threshold"] = 2.0  # nonsense is ignored: the arg-max decides
    assert decision_threshold(b) is None


# ----------------------------------------------------------------------------- the split
def test_split_is_scikit_learns_per_class_group_shuffle():
    from sklearn.model_selection import GroupShuffleSplit

    from napari_gradcam.data import split_indices, split_indices_v1

    labels = np.array([0] * 12 + [1] * 28)
    groups = np.array([f"p{i // 2}" for i in range(40)])
    tr, va = split_indices(labels, groups, 0.25, seed=4)
    for c in (0, 1):
        gs = np.unique(groups[labels == c])  # each group's class (here groups are pure)
        k = math.ceil(0.25 * len(gs))
        ref = next(GroupShuffleSplit(1, test_size=k, train_size=len(gs) - k,
                                     random_state=np.random.default_rng([4, c]).integers(2**31)).split(gs, groups=gs))
        assert set(groups[va][labels[va] == c]) == set(gs[ref[1]])
    assert not set(groups[tr]) & set(groups[va])
    # the hand-written split of older checkpoints, unchanged (a recorded answer)
    mixed = [i % 3 for i in range(40)]
    assert split_indices_v1(mixed, [f"p{i // 2}" for i in range(40)], 0.25, seed=3)[1].tolist() == [
        6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21]


def test_a_checkpoint_from_before_the_split_change_resumes_with_its_split(phantoms, tmp_path):
    from napari_gradcam.data import scan_folder

    out = tmp_path / "m.safetensors"
    cfg = dict(data_dir=str(phantoms), image_size=32, batch_size=8, device="cpu", max_minutes=0, val_fraction=0.3)
    run_training(TrainConfig(out=str(out), epochs=1, **cfg))
    last = tmp_path / "m.last.safetensors"
    old = ng.load_model(last)
    for key in ("split_method", "source_size", "threshold", "threshold_class", "world_size"):
        old.config.training.pop(key, None)  # what a checkpoint of the previous version holds
    old.config.training["monitor"] = "balanced_accuracy"  # its default then
    ng.save_model(old, last)
    v1_train, v1_val = scan_folder(phantoms).split(0.3, 0, method="v1")
    events = []
    res = run_training(TrainConfig(out=str(out), epochs=2, resume=str(last), **cfg), callback=events.append)
    assert [e.epoch for e in events if e.kind == "epoch"] == [2] and res.epochs_done == 2
    assert res.summary["split_method"] == "v1"
    assert res.summary["class_counts"] == {"train": v1_train.class_counts(), "val": v1_val.class_counts()}
    assert res.summary["n_val"] == len(v1_val)


# ----------------------------------------------------------------------------- the train command's options
def test_train_options_come_from_the_config_fields(tmp_path):
    from napari_gradcam.cli import build_parser
    from napari_gradcam.cli.train import config_from_args

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    dests = {a.dest for a in sub._actions}
    cli_fields = [f for f in fields(TrainConfig) if f.metadata.get("cli", True)]
    assert {f.name for f in cli_fields} <= dests and len(cli_fields) >= 40
    for f in cli_fields:
        action = next(a for a in sub._actions if a.dest == f.name)
        assert action.help == f.metadata["help"] and tuple(action.choices or ()) == tuple(f.metadata.get("choices", ()))
    args = parser.parse_args(["train", str(tmp_path), "--out", "m.safetensors"])
    assert config_from_args(args) == TrainConfig(data_dir=str(tmp_path), out="m.safetensors")  # the same defaults
    args = parser.parse_args(["train", str(tmp_path), "--out", "m.safetensors", "--no-augment", "--patience", "0",
                              "--classes", "a", "b", "--fill", "border", "--workers", "2", "--max-minutes", "0"])
    cfg = config_from_args(args)
    assert (cfg.augment, cfg.patience, cfg.classes, cfg.fill, cfg.num_workers, cfg.max_minutes) == (
        False, None, ["a", "b"], "border", 2, 0.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", str(tmp_path), "--out", "m.safetensors", "--fill", "mirror"])


def test_recipe_defaults_follow_the_device():
    import torch

    cfg = TrainConfig(data_dir="x")
    assert cfg.input_size("simple_cnn") == 128 and cfg.input_size("resnet18") == 224
    assert TrainConfig(data_dir="x", image_size=64).input_size("simple_cnn") == 64
    assert cfg.budget_minutes(torch.device("cpu")) == 15 and cfg.budget_minutes(torch.device("cuda")) is None
    assert TrainConfig(data_dir="x", max_minutes=0).budget_minutes(torch.device("cpu")) is None
    assert cfg.monitor == "val_loss" and cfg.patience is None and cfg.fill == "reflection"
    assert Path(TrainConfig(out="a/m.safetensors").last_path) == Path("a/m.last.safetensors")


def test_source_size_reads_headers_only(tmp_path):
    import tifffile
    from PIL import Image

    from napari_gradcam.data import image_extent, typical_source_size

    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((3, 20, 70), np.uint8), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((90, 40), np.float32))
    (tmp_path / "d.png").write_bytes(b"not an image")
    assert [image_extent(tmp_path / n) for n in ("a.png", "b.tif", "c.tif", "d.png")] == [50, 70, 90, None]
    assert typical_source_size([tmp_path / n for n in ("a.png", "b.tif", "c.tif", "d.png")]) == 70
    assert typical_source_size([]) is None
