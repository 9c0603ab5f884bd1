"""Training on two processes with torchrun (gloo on the CPU): same result as one process, and a stop or a
failure on one process ends both with the last checkpoint intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_gradcam as ng
from napari_gradcam.train import optimizer_state_path

pytest.importorskip("torch.distributed.run")

# Runs the CLI in each process, after an optional fault on rank 1 ("fail": its training loss raises in epoch
# 2; "stop": it asks to stop in epoch 2); every rank then writes a fingerprint of its weights.
WORKER = """
import os, sys
from pathlib import Path

import torch
import torch.nn.functional as F

mode, fingerprints = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])
last = Path(sys.argv[sys.argv.index("--out") + 1].replace(".safetensors", ".last.safetensors"))
if rank == 1 and mode != "ok":
    import napari_gradcam.train.run as run

    real_ce, real_stop = F.cross_entropy, run.Trainer.stop_requested

    def cross_entropy(*a, **kw):
        if kw.get("reduction", "mean") == "mean" and last.exists() and mode == "fail":
            raise RuntimeError("rank 1 broke")
        return real_ce(*a, **kw)

    F.cross_entropy = cross_entropy
    run.Trainer.stop_requested = lambda self: (mode == "stop" and last.exists()) or real_stop(self)

import napari_gradcam.train.run as run

real_init = run.Trainer.__init__


def init(self, *a, **kw):
    real_init(self, *a, **kw)
    run.TRAINER = self


run.Trainer.__init__ = init
from napari_gradcam.cli import main

code = main(sys.argv[3:])
model = run.TRAINER.model
vec = torch.cat([p.detach().flatten() for p in model.parameters()])
fingerprints.mkdir(exist_ok=True)
(fingerprints / f"rank{rank}.txt").write_text(f"{code} {float(vec.sum()):.6f} {float(vec.abs().sum()):.6f}")
sys.exit(code)
"""


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("ddp") / "data", n_per_class=12, size=32, seed=0)


def _torchrun(tmp_path: Path, data: Path, mode: str, *extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "m.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), mode,
           str(tmp_path / "fingerprints"), "train", str(data), "--out", str(out), "--image-size", "32", "--epochs",
           "3", "--batch-size", "8", "--device", "cpu", "--max-minutes", "0", "-q", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    prints = sorted((tmp_path / "fingerprints").glob("rank*.txt"))
    return proc, [p.read_text() for p in prints]


def _pair(checkpoint: Path) -> tuple[int, int, bool]:
    import torch

    summary = ng.load_model(checkpoint, device="cpu").config.training
    side = torch.load(optimizer_state_path(checkpoint), map_location="cpu", weights_only=True)
    return summary["epochs_done"], side["epochs_done"], summary.get("checkpoint_id") == side.get("checkpoint_id")


def test_two_processes_train_one_model(phantoms, tmp_path):
    proc, prints = _torchrun(tmp_path, phantoms, "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(prints) == 2 and prints[0] == prints[1] and prints[0].startswith("0 ")  # the same weights on both
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "m.safetensors")]  # rank 0 alone reports
    b = ng.load_model(tmp_path / "m.safetensors", device="cpu")
    summary = b.config.training
    assert summary["world_size"] == 2 and summary["epochs_planned"] == 3
    assert b.classes == ["covid", "normal", "pneumonia"] and b.input_size == 32
    assert sum(summary["class_counts"]["val"].values()) == summary["n_val"] == 9  # all validation images, once
    assert _pair(tmp_path / "m.last.safetensors") == (3, 3, True)
    assert not list(tmp_path.glob(".*.tmp"))
    # it loads and predicts like a model trained in one process
    from napari_gradcam.phantoms import make_xray

    p = ng.predict(b, [make_xray("covid", 40, seed=s).image for s in range(3)])
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    from napari_gradcam.train import TrainConfig, run_training

    one = run_training(TrainConfig(data_dir=str(phantoms), out=str(tmp_path / "one" / "m.safetensors"), image_size=32,
                                   epochs=1, batch_size=8, device="cpu", max_minutes=0))
    single = ng.load_model(one.best_path, device="cpu")
    assert set(single.config.training) == set(summary) and single.config.training["world_size"] == 1
    assert [n for n, _ in single.model.named_parameters()] == [n for n, _ in b.model.named_parameters()]


@pytest.mark.parametrize("mode", ["fail", "stop"])
def test_a_fault_on_one_process_ends_both(phantoms, tmp_path, mode):
    proc, prints = _torchrun(tmp_path, phantoms, mode)
    last = tmp_path / "m.last.safetensors"
    codes = sorted(int(t.split()[0]) for t in prints)
    if mode == "fail":
        assert proc.returncode != 0 and codes == [2, 2]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("napari-gradcam: error:")]
        assert lines == [
            "napari-gradcam: error: Process 1 of 2: Training failed in epoch 2 at batch 1 of 2 (RuntimeError: rank 1 "
            f"broke); the checkpoint of epoch 1 in {last} is intact; resume from it."], proc.stderr[-3000:]
    else:
        assert proc.returncode == 0 and codes == [0, 0], proc.stderr[-3000:]
        assert "Stopped during epoch 2; the last checkpoint (epoch 1) is kept." in proc.stderr
    assert _pair(last) == (1, 1, True) and not list(tmp_path.glob(".*.tmp"))
