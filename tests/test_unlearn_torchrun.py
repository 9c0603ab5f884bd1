"""A-ClArC under torchrun: every process reads the finding's artifacts itself and the model records them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import napari_gradcam as ng
import unlearn_helpers as H

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def test_two_processes_train_with_the_artifact_pasted(tmp_path):
    data = H.make_data(tmp_path / "data", n_train=24, n_test=2, share=0.5)
    audit = H.write_audit(tmp_path / "audit", data, "features")
    out = tmp_path / "a.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "napari_gradcam", "train", str(data["train"]), "--out", str(out), "--image-size", "48", "--epochs", "1",
           "--batch-size", "8", "--device", "cpu", "--max-minutes", "0", "--group-pattern", "none", "--no-augment",
           "--unlearn", f"{audit}:3", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = ng.load_model(out, device="cpu").config.training
    assert summary["world_size"] == 2
    (rec,) = summary["unlearned"]
    assert rec["method"] == "a-clarc" and rec["clusters"] == [3] and rec["n_patches"] == [12]
    assert rec["rates"] == [[0.5, 0.0]]


def test_a_missing_audit_stops_training_with_one_sentence(tmp_path, capsys):
    from napari_gradcam.cli import main

    data = H.make_data(tmp_path / "data", n_train=6, n_test=1)
    code = main(["train", str(data["train"]), "--out", str(tmp_path / "m.safetensors"), "--image-size", "48",
                 "--epochs", "1", "--device", "cpu", "--group-pattern", "none", "--unlearn", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "not an audit folder" in err and err.strip().count("\n") == 0
