"""Training as a generator of events, for the napari worker, the CLI and the tests alike.

::

    from napari_gradcam.train import TrainConfig, train

    cfg = TrainConfig(data_dir="chest_xray/train", out="model.safetensors")   # the CPU recipe
    gen = train(cfg)
    for event in gen:       # TrainEvent: start, load, batch, epoch, warning, checkpoint, done|stopped
        print(event.kind, event.epoch, event.batch, event.loss, event.metrics)
    # or: result = run_training(cfg)       -> TrainResult (best/last paths, history, the best model)

The run is built from pieces that can be read and tested alone:

=====================  =====================================================================
:mod:`.config`         :class:`TrainConfig`: the options, with their command-line help
:mod:`.prepare`        data preparation: scan, patient-grouped split, data sets, class weights
:mod:`.setup`          model (new or resumed), optimizer, mixed precision, learning-rate schedule
:mod:`.checkpoints`    output checks and the checkpoint writer (atomic, run id pairing model and optimizer)
:mod:`.epoch`          one training epoch: sharded batches and optimisation steps
:mod:`.validation`     validation metrics and the train/validation mismatch guard
:mod:`.stopping`       best-epoch tracking, early stopping, the time budget
:mod:`.distributed`    several processes under ``torchrun`` (DistributedDataParallel)
:mod:`.run`            :func:`train`: the orchestrator that yields the events
=====================  =====================================================================

**Stopping.** Between any two batches: call ``gen.close()``, set ``cfg.stop_event`` (a
``threading.Event``) or pass ``cfg.should_stop`` (a callable returning True).  With the flag or
callable the generator yields a final ``"stopped"`` event and returns a :class:`TrainResult`; with
``close()`` it just ends.  Either way no file is half-written: checkpoints are written only at the
end of an epoch and atomically (temp file + rename), so the last written checkpoint stays loadable.

**Checkpoints.** After every epoch ``<out stem>.last.safetensors`` is written, and ``out`` whenever
the monitored validation metric improves (the best model).  Both are ordinary model bundles (load
them with :func:`napari_gradcam.load_model`) whose ``config.training`` holds the training summary:
epochs done, the metrics history, best metric and epoch, the data folder, split seed, fraction and
method, class counts, the recipe, the typical source image size (``source_size``: median of
max(height, width) of the training images, pixels) and, for two classes, the decision ``threshold``
chosen on the validation images (see :mod:`napari_gradcam.decision`).  Next to each,
``<stem>.optim.pt`` holds the optimizer (and AMP scaler) state as plain tensors.

**Resuming.** ``TrainConfig(resume="model.last.safetensors", epochs=20, ...)`` loads the weights and the
summary, re-creates the same train/validation split (the stored seed, fraction, grouping rule and split
method), restores the optimizer state from the sidecar when present (otherwise restarts the optimizer,
and the start event says so), and continues counting epochs from the stored ``epochs_done``; the
learning-rate schedule is a function of the global step, so it continues too.

**Failures.** The output folder is checked before anything is trained (writable, room for the
checkpoints), and temporary files left by a killed run are removed.  An exception in a batch, in
validation or while writing a checkpoint ends the run with a :class:`TrainingError` (one sentence: where
it failed, why, and which checkpoint is intact); files already written are never touched, a failed
write leaves no temporary file.  Images that cannot be read mid-training are replaced by another image
of their class and listed in ``TrainResult.skipped`` and the summary.
"""

from __future__ import annotations

from .checkpoints import optimizer_state_path
from .config import CLASS_WEIGHTING, MONITORS, OPTIMIZERS, SCHEDULES, TrainConfig
from .epoch import epoch_batches
from .evaluate import evaluate_model
from .events import EVENT_KINDS, TrainEvent, TrainResult
from .run import Trainer, run_training, train
from .setup import lr_factor
from .validation import MismatchGuard, evaluate_arrays

__all__ = [
    "CLASS_WEIGHTING", "EVENT_KINDS", "MONITORS", "OPTIMIZERS", "SCHEDULES", "MismatchGuard", "TrainConfig",
    "TrainEvent", "TrainResult", "Trainer", "epoch_batches", "evaluate_arrays", "evaluate_model", "lr_factor",
    "optimizer_state_path", "run_training", "train",
]
