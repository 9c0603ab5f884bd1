"""Training faults (issue #6): stop mid-epoch, an exception in a batch, an image that turns unreadable, a full
or unwritable disk, a process killed while writing a checkpoint.

Each case checks the one-sentence error and the state afterwards: the files already written are unchanged
and loadable, no temporary file is left, and resuming from the surviving checkpoint counts epochs on.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import pytest

import napari_gradcam as ng
from napari_gradcam.cli import main
from napari_gradcam.errors import GradCamError
from napari_gradcam.errors import TrainingError
from napari_gradcam.train import TrainConfig, optimizer_state_path, run_training, train

FILES = {"m.safetensors", "m.optim.pt", "m.last.safetensors", "m.last.optim.pt"}


pytestmark = pytest.mark.usefixtures("torch_one_thread_module")  # tiny models: no OpenMP spinning


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("faults") / "data", n_per_class=20, size=40, seed=5)


def _cfg(phantoms, out, **kw):
    base = dict(data_dir=str(phantoms), out=str(out), image_size=32, epochs=2, batch_size=16, lr=3e-3,
                augment=False, patience=None, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _drive(gen, events: list, on_event=None):
    """Run a training generator to its end, recording events; returns the TrainResult (errors propagate)."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        events.append(ev)
        if on_event is not None:
            on_event(ev)


def _state(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (temporary files included) with its bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _pair(checkpoint: Path) -> tuple[int, int, bool]:
    """(epochs in the model file, epochs in its optimizer sidecar, whether both come from one save)."""
    import torch

    summary = ng.load_model(checkpoint, device="cpu").config.training
    side = torch.load(optimizer_state_path(checkpoint), map_location="cpu", weights_only=True)
    return summary["epochs_done"], side["epochs_done"], summary.get("checkpoint_id") == side.get("checkpoint_id")


def _resume(phantoms, out, epochs):
    """Resume from ``<out>.last``; returns (start message, epochs trained, result)."""
    events: list = []
    res = _drive(train(_cfg(phantoms, out, epochs=epochs, resume=str(out.parent / "m.last.safetensors"))), events)
    return events[0].message, [e.epoch for e in events if e.kind == "epoch"], res


def _at_epoch2(action):
    """An event hook that runs ``action`` once, after the first batch of epoch 2 (epoch 1 is saved)."""
    def hook(ev):
        if ev.kind == "batch" and ev.epoch == 2 and ev.batch == 1:
            action()
    return hook


# ----------------------------------------------------------------------------- 1. stop mid-epoch
@pytest.mark.parametrize("how", ["stop_event", "close"])
def test_stop_mid_epoch_leaves_saved_files_untouched(phantoms, tmp_path, how):
    out = tmp_path / "m.safetensors"
    stop = threading.Event()
    gen = train(_cfg(phantoms, out, epochs=3, stop_event=stop))
    events, saved = [], {}
    for ev in gen:
        events.append(ev)
        if ev.kind == "batch" and ev.epoch == 2 and ev.batch == 1:
            saved = _state(tmp_path)
        if ev.kind == "batch" and ev.epoch == 2 and ev.batch == 2:
            if how == "close":
                gen.close()
                break
            stop.set()
    if how == "stop_event":
        assert events[-1].kind == "stopped"
        assert events[-1].message == "Stopped during epoch 2; the last checkpoint (epoch 1) is kept."
    assert set(saved) == FILES  # epoch 1 wrote the best and the last model, each with its sidecar
    assert _state(tmp_path) == saved  # byte for byte: nothing rewritten, no temporary file left
    assert _pair(tmp_path / "m.last.safetensors") == (1, 1, True)
    message, epochs, res = _resume(phantoms, out, 3)
    assert "after epoch 1" in message and "optimizer state restored" in message
    assert epochs == [2, 3] and [h["epoch"] for h in res.history] == [1, 2, 3]
    assert set(_state(tmp_path)) == FILES and _pair(tmp_path / "m.last.safetensors") == (3, 3, True)


# ----------------------------------------------------------------------------- 2. an exception in a batch
@pytest.fixture
def fail_loss(monkeypatch):
    """Put an exception in ``armed["exc"]``: the next training loss raises it once (validation unaffected).

    ``armed["when"]``, a callable, can delay it further.
    """
    import torch.nn.functional as F

    real = F.cross_entropy
    armed: dict = {}

    def cross_entropy(*args, **kw):
        if kw.get("reduction", "mean") == "mean" and "exc" in armed and armed.get("when", lambda: True)():
            raise armed.pop("exc")
        return real(*args, **kw)

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    return armed


def _oom():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")


@pytest.mark.parametrize("make, words", [
    (lambda: RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\nsee the log"),
     "Training failed in epoch 2 at batch 2 of 3 (RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR see the log)"),
    (_oom, "Training ran out of memory in epoch 2 at batch 2 of 3 (OutOfMemoryError: CUDA out of memory."),
    (MemoryError, "Training ran out of memory in epoch 2 at batch 2 of 3 (MemoryError)"),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried "
                          "to allocate 4294967296 bytes."),
     "Training ran out of memory in epoch 2 at batch 2 of 3 (RuntimeError: [enforce fail at alloc_cpu.cpp:117]"),
])
def test_exception_in_a_batch_is_one_sentence_and_keeps_the_checkpoint(phantoms, tmp_path, fail_loss, make, words):
    out, last = tmp_path / "m.safetensors", tmp_path / "m.last.safetensors"
    saved: dict = {}

    def arm():
        saved.update(_state(tmp_path))
        fail_loss["exc"] = make()

    events: list = []
    with pytest.raises(TrainingError) as err:
        _drive(train(_cfg(phantoms, out)), events, _at_epoch2(arm))
    msg = str(err.value)
    assert msg.startswith(words) and "\n" not in msg
    assert msg.endswith(f"; the checkpoint of epoch 1 in {last} is intact; resume from it.")
    if "memory" in words:
        assert "use a smaller batch size (now 16) or image size (now 32)" in msg
    assert isinstance(err.value.__cause__, type(make()))  # the original exception is kept for debugging
    assert [e.kind for e in events].count("epoch") == 1
    assert _state(tmp_path) == saved and _pair(last) == (1, 1, True)
    message, epochs, res = _resume(phantoms, out, 2)
    assert "optimizer state restored" in message and epochs == [2] and res.epochs_done == 2


def test_cli_reports_a_failed_batch_in_one_sentence_and_resumes(phantoms, tmp_path, fail_loss, capsys):
    out, last = tmp_path / "m.safetensors", tmp_path / "m.last.safetensors"
    fail_loss["exc"] = RuntimeError("CUDA error: an illegal memory access was encountered")
    fail_loss["when"] = last.exists  # the first batch after epoch 1 was saved
    args = ["train", str(phantoms), "--out", str(out), "--image-size", "32", "--epochs", "2", "--batch-size", "16",
            "--no-augment", "--patience", "0", "--device", "cpu", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "napari-gradcam: error: Training failed in epoch 2 at batch 1 of 3 (RuntimeError: CUDA error: an illegal "
        f"memory access was encountered); the checkpoint of epoch 1 in {last} is intact; resume from it.")
    assert _pair(last) == (1, 1, True)
    assert main([*args, "--resume", str(last)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "epoch 2/2" in captured.err
    assert set(_state(tmp_path)) == FILES and _pair(last) == (2, 2, True)


def test_cli_ctrl_c_during_a_checkpoint_write(phantoms, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    real = safetensors.torch.save_file
    last = tmp_path / "m.last.safetensors"
    saved: dict = {}

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".m.last.safetensors.") and last.exists():  # epoch 2: Ctrl-C mid-write
            saved.update({k: v for k, v in _state(tmp_path).items() if k != Path(filename).name})
            Path(filename).write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    args = ["train", str(phantoms), "--out", str(tmp_path / "m.safetensors"), "--image-size", "32", "--epochs", "2",
            "--batch-size", "16", "--no-augment", "--patience", "0", "--device", "cpu", "--quiet"]
    assert main(args) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "cancelled"
    assert set(saved) == FILES and _state(tmp_path) == saved and _pair(last) == (1, 1, True)


# ----------------------------------------------------------------------------- 3. an image turns unreadable
def _copy(phantoms, tmp_path) -> Path:
    return Path(shutil.copytree(phantoms, tmp_path / "data"))


def test_image_corrupted_mid_training_is_replaced_and_listed(phantoms, tmp_path):
    from napari_gradcam.data import scan_folder

    root = _copy(phantoms, tmp_path)
    out = tmp_path / "out" / "m.safetensors"
    data = scan_folder(root)
    bad = data.items[3].path

    def corrupt(ev):
        if ev.kind == "checkpoint" and ev.epoch == 1:
            bad.write_bytes(b"this is no longer an image" * 10)

    events: list = []
    res = _drive(train(_cfg(phantoms, out, cache=False), data=data), events, corrupt)
    assert res.epochs_done == 2 and res.reason == "finished"
    assert [p for p, _ in res.skipped] == [bad] and res.skipped[0][1]
    epochs = [e for e in events if e.kind == "epoch"]
    assert "unreadable" not in epochs[0].message
    assert epochs[1].message.endswith("; 1 unreadable image(s) replaced by others of their class")
    assert events[-1].kind == "done" and events[-1].message.endswith("; 1 file(s) skipped")
    for summary in (res.summary, ng.load_model(out.parent / "m.last.safetensors").config.training):
        assert summary["n_skipped"] == 1 and summary["skipped"] == [[str(bad), res.skipped[0][1]]]


def test_image_corrupted_after_the_scan_is_replaced_and_listed(phantoms, tmp_path):
    from napari_gradcam.data import scan_folder

    root = _copy(phantoms, tmp_path)
    data = scan_folder(root)
    bad = data.items[-1].path
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated file: passes the scan, fails to decode
    res = run_training(_cfg(phantoms, tmp_path / "m.safetensors", epochs=1), data=data)
    assert res.epochs_done == 1 and [p for p, _ in res.skipped] == [bad]
    assert res.summary["skipped"][0][0] == str(bad)
    assert ng.load_model(res.best_path).config.training["n_skipped"] == 1


# ----------------------------------------------------------------------------- 4. full or unwritable disk
def _cut_short(path, exc):
    """Leave half a file at ``path``, then raise ``exc``: a write that failed part-way."""
    Path(path).write_bytes(b"\0" * 64)
    raise exc


def _fault_model(monkeypatch, exc):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, name, metadata=None: _cut_short(name, exc))


def _fault_sidecar(monkeypatch, exc):
    import torch

    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: _cut_short(f, exc))


def _fault_folder(monkeypatch, folder):
    """No file can be created in ``folder`` (as in a folder without write permission)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _file_size_limit(monkeypatch, nbytes):
    """A real failing write: files this process writes cannot grow past ``nbytes`` (EFBIG)."""
    resource = pytest.importorskip("resource")
    import signal

    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    return lambda: (resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)), signal.signal(signal.SIGXFSZ, old_handler))


@pytest.mark.parametrize("fault", ["disk full (model)", "disk full (optimizer state)", "disk full (torch's words)",
                                   "folder unwritable", "file size limit"])
def test_failed_checkpoint_write_keeps_the_previous_one(phantoms, tmp_path, monkeypatch, fault):
    out, last = tmp_path / "m.safetensors", tmp_path / "m.last.safetensors"
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    saved: dict = {}
    undo: list = []

    def arm():
        saved.update(_state(tmp_path))
        if fault == "disk full (model)":
            _fault_model(monkeypatch, enospc)
        elif fault == "disk full (optimizer state)":
            _fault_sidecar(monkeypatch, enospc)
        elif fault == "disk full (torch's words)":  # what torch.save really raises on a full disk
            _fault_sidecar(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576"))
            monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**9, used=10**9, free=0))
        elif fault == "folder unwritable":
            _fault_folder(monkeypatch, tmp_path)
        else:
            undo.append(_file_size_limit(monkeypatch, 4096))

    events: list = []
    try:
        with pytest.raises(TrainingError) as err:
            _drive(train(_cfg(phantoms, out)), events, _at_epoch2(arm))
    finally:
        for restore in undo:
            restore()
    monkeypatch.undo()
    msg = str(err.value)
    assert "\n" not in msg and [e.kind for e in events].count("epoch") == 2
    if fault in ("disk full (optimizer state)", "disk full (torch's words)"):
        # the new weights are in place; the stale sidecar (the previous epoch's) is removed
        assert msg == (f"Could not write the optimizer state of epoch 2 to {tmp_path / 'm.last.optim.pt'} "
                       f"(No space left on device); the checkpoint of epoch 2 in {last} is intact; "
                       "resume from it after you free some space.")
        assert set(_state(tmp_path)) == FILES - {"m.last.optim.pt"}
        assert ng.load_model(last).config.training["epochs_done"] == 2
        assert {k: v for k, v in _state(tmp_path).items() if not k.startswith("m.last")} == {
            k: v for k, v in saved.items() if not k.startswith("m.last")}
        note, expect = "optimizer restarted (no saved optimizer state)", [3]
    else:
        why, advice = {"disk full (model)": ("No space left on device", " after you free some space"),
                       "folder unwritable": ("Permission denied", f" after you make {tmp_path} writable"),
                       "file size limit": ("File too large", "")}[fault]
        assert msg == (f"Could not write the checkpoint of epoch 2 to {last} ({why}); the checkpoint of epoch 1 "
                       f"in {last} is intact; resume from it{advice}.")
        assert set(saved) == FILES and _state(tmp_path) == saved and _pair(last) == (1, 1, True)
        note, expect = "optimizer state restored", [2, 3]
    message, epochs, res = _resume(phantoms, out, 3)
    assert note in message and epochs == expect and res.epochs_done == 3
    assert set(_state(tmp_path)) == FILES and _pair(last) == (3, 3, True)


@pytest.mark.parametrize("how", ["chmod", "patched"])
def test_unwritable_output_folder_is_refused_before_training(phantoms, tmp_path, monkeypatch, capsys, how):
    folder = tmp_path / "models"
    folder.mkdir()
    if how == "chmod":
        if os.name != "posix" or os.geteuid() == 0:
            pytest.skip("folder permissions do not stop root (the 'patched' case covers this)")
        folder.chmod(0o500)
    else:
        _fault_folder(monkeypatch, folder)
    try:
        expected = (f"The output folder {folder} is not writable (Permission denied); make it writable or choose "
                    "another output file.")
        with pytest.raises(TrainingError) as err:
            next(train(_cfg(phantoms, folder / "m.safetensors")))
        assert str(err.value) == expected  # raised on the first next(): before any image is read
        assert main(["train", str(phantoms), "--out", str(folder / "m.safetensors"), "--image-size", "32",
                     "--device", "cpu", "--quiet"]) == 2
        assert capsys.readouterr().err == f"napari-gradcam: error: {expected}\n"
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_output_that_is_a_folder_is_refused(phantoms, tmp_path):
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(GradCamError, match="is a folder; give a file name ending in .safetensors"):
        next(train(_cfg(phantoms, tmp_path / "m.safetensors")))


def test_too_little_free_space_is_refused_before_training(phantoms, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**9, used=10**9, free=80_000))
    events: list = []
    with pytest.raises(TrainingError) as err:
        _drive(train(_cfg(phantoms, tmp_path / "m.safetensors")), events)
    assert events == [] and list(tmp_path.iterdir()) == []
    msg = str(err.value)
    assert msg.startswith(f"Only 0.1 MB is free in {tmp_path}, but the checkpoints need about ")
    assert msg.endswith(" MB; free some space or choose another output folder.")
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert run_training(_cfg(phantoms, tmp_path / "m.safetensors", epochs=1)).epochs_done == 1


def test_sidecar_of_another_run_is_not_used(phantoms, tmp_path):
    """A crash between the two renames of a fresh run's first save: same epoch count, another run's optimizer."""
    out, side = tmp_path / "m.safetensors", tmp_path / "m.last.optim.pt"
    run_training(_cfg(phantoms, out, epochs=1, lr=1e-3))
    old = side.read_bytes()
    run_training(_cfg(phantoms, out, epochs=1))
    side.write_bytes(old)
    assert _pair(tmp_path / "m.last.safetensors") == (1, 1, False)
    message, epochs, _ = _resume(phantoms, out, 2)
    assert "optimizer restarted (the saved state in m.last.optim.pt belongs to another checkpoint" in message
    assert epochs == [2] and _pair(tmp_path / "m.last.safetensors") == (2, 2, True)


# ----------------------------------------------------------------------------- 5. killed while writing
CHILD = """
import os, sys
from pathlib import Path

import torch

from napari_gradcam.train import TrainConfig, optimizer_state_path, run_training

data, out, which = sys.argv[1:4]
torch.set_num_threads(1)
cfg = TrainConfig(data_dir=data, out=out, image_size=32, epochs=3, batch_size=16, lr=3e-3, augment=False,
                  patience=None, seed=0, device="cpu")
target = cfg.last_path if which == "model" else optimizer_state_path(cfg.last_path)
real_replace = os.replace


def replace(src, dst, *args, **kw):
    if Path(dst) == target and target.exists():  # epoch 2's file is complete in its temp file: die now
        os._exit(9)
    return real_replace(src, dst, *args, **kw)


os.replace = replace
run_training(cfg)
"""


@pytest.mark.parametrize("which", ["model", "sidecar"])
def test_killed_during_a_checkpoint_write(phantoms, tmp_path, which):
    out, last = tmp_path / "m.safetensors", tmp_path / "m.last.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(phantoms), str(out), which], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    left = set(_state(tmp_path)) - FILES
    temp_prefix = ".m.last.safetensors." if which == "model" else ".m.last.optim.pt."
    assert len(left) == 1 and next(iter(left)).startswith(temp_prefix)  # a killed process cannot clean up
    assert ng.load_model(out).config.training["epochs_done"] == 1
    if which == "model":  # killed before the rename: the epoch-1 pair is untouched
        assert _pair(last) == (1, 1, True)
        note, expect = "optimizer state restored", [2, 3]
    else:  # killed between the two renames: new weights, old optimizer state, told apart by their stamps
        assert _pair(last) == (2, 1, False)
        note, expect = "optimizer restarted (the saved state in m.last.optim.pt belongs to another checkpoint", [3]
    message, epochs, res = _resume(phantoms, out, 3)
    assert "removed 1 unfinished temporary file(s) of an interrupted run" in message and note in message
    assert epochs == expect and res.epochs_done == 3
    assert set(_state(tmp_path)) == FILES and _pair(last) == (3, 3, True)


def test_output_under_a_file_is_refused(phantoms, tmp_path):
    """An output path whose folder would have to be made inside a file: one sentence, nothing made."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot be made: .*blocker is a file"):
        next(train(_cfg(phantoms, blocker / "sub" / "m.safetensors")))
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
