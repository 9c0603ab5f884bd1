"""Training as a generator of events, for the napari worker, the CLI and the tests alike.

::

    from napari_gradcam.train import TrainConfig, train

    cfg = TrainConfig(data_dir="chest_xray/train", out="model.safetensors", arch="simple_cnn",
                      image_size=128, epochs=8)
    gen = train(cfg)
    for event in gen:                      # TrainEvent: start, load, batch, epoch, checkpoint, done|stopped
        print(event.kind, event.epoch, event.batch, event.loss, event.metrics)
    # or: result = run_training(cfg)       -> TrainResult (best/last paths, history, the best model)

**Stopping.** Between any two batches: call ``gen.close()``, set ``cfg.stop_event`` (a
``threading.Event``) or pass ``cfg.should_stop`` (a callable returning True).  With the flag or
callable the generator yields a final ``"stopped"`` event and returns a :class:`TrainResult`; with
``close()`` it just ends.  Either way no file is half-written: checkpoints are written only at the
end of an epoch and atomically (temp file + rename), so the last written checkpoint stays loadable.

**Checkpoints.** After every epoch ``<out stem>.last.safetensors`` is written, and ``out`` whenever
the monitored validation metric improves (the best model).  Both are ordinary model bundles (load
them with :func:`napari_gradcam.load_model`) whose ``config.training`` holds the training summary:
epochs done, the metrics history, best metric and epoch, the data folder, split seed and fraction,
class counts and the recipe.  Next to each, ``<stem>.optim.pt`` holds the optimizer (and AMP scaler)
state as plain tensors (``torch.load(weights_only=True)``).

**Resuming.** ``TrainConfig(resume="model.last.safetensors", epochs=20, ...)`` loads the weights and the
summary, re-creates the same train/validation split (the stored seed, fraction and grouping rule),
restores the optimizer state from the sidecar when present (otherwise restarts the optimizer, and the
start event says so), and continues counting epochs from the stored ``epochs_done``; the learning-rate
schedule is a function of the global step, so it continues too.  Each checkpoint and its sidecar carry the
same ``checkpoint_id``: a sidecar left from another save (a crash between the two writes) is not used.

**Failures.** The output folder is checked before anything is trained (writable, room for the
checkpoints), and temporary files left by a killed run are removed.  An exception in a batch, in
validation or while writing a checkpoint ends the run with a :class:`TrainingError` (one sentence: where
it failed, why, and which checkpoint is intact); files already written are never touched, a failed
write leaves no temporary file.  Images that cannot be read mid-training are replaced by another image
of their class and listed in ``TrainResult.skipped`` and the summary.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

import numpy as np

from .data import Augmentation, ImageDataset, ImageFolderData, scan_folder
from .errors import DatasetError, GradCamError, TrainingError

if TYPE_CHECKING:  # pragma: no cover
    import threading

    import torch

    from .bundle import ModelBundle

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
CLASS_WEIGHTING = ("balanced", "sampler", "none")
MONITORS = ("balanced_accuracy", "accuracy", "roc_auc", "val_loss")
EVENT_KINDS = ("start", "load", "batch", "epoch", "checkpoint", "done", "stopped")


@dataclass
class TrainConfig:
    """Everything a training run needs (all plain values, stored in the checkpoints' summary).

    Data: ``data_dir`` (class subfolders) or ``csv`` (path,label[,group]); ``classes`` picks and
    orders classes; ``val_fraction`` of the images (by patient, see ``group_pattern``) are held out.
    """

    data_dir: str | None = None
    out: str = "model.safetensors"
    csv: str | None = None
    classes: list[str] | None = None
    group_pattern: str | None = "auto"  # regex for the patient id in file names; "none": every file its own group
    val_fraction: float = 0.2
    # model
    arch: str = "simple_cnn"
    in_channels: int = 1
    image_size: int = 224
    pretrained: bool | str = "auto"  # "auto": ImageNet weights when torchvision's file is in the cache
    freeze_epochs: int = 0  # train only the head for this many first epochs
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # per batch; "step": x0.1 at 1/2 and 3/4 of the run
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weighting: str = "balanced"  # loss weights (balanced), balanced sampling (sampler) or none
    # augmentation (training images only)
    augment: bool = True
    flips: bool = False
    rotation: float = 7.0
    translate: float = 0.06
    zoom: float = 0.08
    brightness: float = 0.15
    contrast: float = 0.15
    erase: float = 0.0  # hide-and-seek: hide each cell of an erase_grid x erase_grid grid with this probability
    erase_grid: int = 4
    # control
    patience: int | None = 5  # early stopping: epochs without improvement of ``monitor``; None: never
    monitor: str = "balanced_accuracy"
    min_delta: float = 0.0
    amp: bool = True  # mixed precision on CUDA (bfloat16 where supported, else float16 + loss scaling)
    channels_last: bool | None = None  # memory layout; None: on for CPU and CUDA
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    cache: bool | None = None  # keep decoded images in memory; None: when they fit
    steps_per_epoch: int | None = None  # cap batches per epoch (quick runs, tests)
    max_minutes: float | None = None  # time budget: no epoch starts that would end after it, and the
    #                                   learning-rate schedule runs by the clock when that is further along
    log_every: int | None = None  # compute the loss value every N batches; None: 1 on CPU, 10 on GPU
    resume: str | None = None
    # stop flags (not stored)
    stop_event: "threading.Event | None" = field(default=None, repr=False, compare=False)
    should_stop: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    @property
    def last_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(out.name[: -len(out.suffix)] + ".last" + out.suffix if out.suffix else out.name + ".last")

    def recipe(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (without stop flags)."""
        skip = {"stop_event", "should_stop"}
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in skip}

    def validate(self) -> None:
        """Raise GradCamError (one sentence) for impossible options."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise GradCamError(msg)

        _check_numbers(self)  # types and ranges of every number (bools, 1.5 epochs, NaN, -1 refused)
        need(int(self.epochs) >= 1, f"epochs must be at least 1, not {self.epochs}.")
        need(int(self.batch_size) >= 1, f"batch size must be at least 1, not {self.batch_size}.")
        need(float(self.lr) > 0, f"The learning rate must be positive, not {self.lr}.")
        need(0 < float(self.val_fraction) < 1, f"The validation fraction must be between 0 and 1, not {self.val_fraction}.")
        need(self.optimizer.lower() in OPTIMIZERS, f"Unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        need(self.schedule.lower() in SCHEDULES, f"Unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        need(self.class_weighting.lower() in CLASS_WEIGHTING,
             f"Unknown class weighting {self.class_weighting!r}; choose one of {', '.join(CLASS_WEIGHTING)}.")
        need(self.monitor in MONITORS, f"Unknown monitor {self.monitor!r}; choose one of {', '.join(MONITORS)}.")
        need(16 <= int(self.image_size) <= 4096, f"The image size must be between 16 and 4096 pixels, not {self.image_size}.")
        need(int(self.in_channels) in (1, 3), f"in_channels must be 1 or 3, not {self.in_channels}.")
        need(Path(self.out).suffix == ".safetensors", f"The output model must be a .safetensors file, not {self.out}.")
        need(self.data_dir is not None or self.csv is not None, "No data folder was given.")
        need(self.patience is None or int(self.patience) >= 1, f"patience must be at least 1 (or None), not {self.patience}.")
        need(self.max_minutes is None or float(self.max_minutes) > 0, f"max_minutes must be positive, not {self.max_minutes}.")
        need(0 <= float(self.erase) < 1, f"The hide-and-seek probability must be in [0, 1), not {self.erase}.")


def _check_numbers(cfg: "TrainConfig") -> None:
    """ParameterError (one sentence naming the option) for a number of the wrong type or out of range."""
    from .validate import check_int, check_number

    ints = {"epochs": 1, "batch_size": 1, "in_channels": 1, "image_size": 16, "freeze_epochs": 0,
            "erase_grid": 1, "num_workers": 0}
    for name, low in ints.items():
        check_int(getattr(cfg, name), name, low)
    check_int(cfg.seed, "seed", 0, 2**32 - 1)
    for name in ("steps_per_epoch", "patience", "log_every"):
        if getattr(cfg, name) is not None:
            check_int(getattr(cfg, name), name, 1)
    check_number(cfg.lr, "The learning rate", above=0)
    check_number(cfg.val_fraction, "The validation fraction", above=0, below=1)
    for name in ("weight_decay", "warmup_epochs", "min_delta", "rotation"):
        check_number(getattr(cfg, name), name, 0)
    for name in ("momentum", "label_smoothing", "translate", "zoom", "brightness", "contrast", "erase"):
        check_number(getattr(cfg, name), name, 0, below=1)
    if cfg.max_minutes is not None:
        check_number(cfg.max_minutes, "max_minutes", above=0)


@dataclass
class TrainEvent:
    """One step of progress.

    Attributes
    ----------
    kind : str
        ``"start"`` (set-up done; message describes data and model), ``"load"`` (decoding images
        into memory: ``batch``/``n_batches`` are images done/total), ``"batch"`` (one optimisation step
        done), ``"epoch"`` (epoch done; ``metrics`` has validation results), ``"checkpoint"`` (a file
        was written: ``path``), ``"done"`` (finished or stopped early by patience) or ``"stopped"``
        (stopped on request).
    epoch : int
        1-based epoch in progress or just finished (0 before the first).
    n_epochs, batch, n_batches : int
        Planned epochs; batches done in this epoch and per epoch.
    loss : float or None
        Mean training loss over this epoch so far.
    metrics : dict
        ``train_loss, val_loss, accuracy, balanced_accuracy, roc_auc, sensitivity, specificity, lr,
        seconds, images_per_s`` on epoch events; the summary on done/stopped.
    images_per_s : float or None
        Training throughput this epoch (optimisation only, without validation and consumer time).
    elapsed_s : float
        Wall time since the run started.
    """

    kind: str
    epoch: int = 0
    n_epochs: int = 0
    batch: int = 0
    n_batches: int = 0
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    images_per_s: float | None = None
    elapsed_s: float = 0.0
    message: str = ""
    path: str | None = None

    @property
    def progress(self) -> float:
        """Fraction of the planned optimisation steps done, in [0, 1]."""
        if self.kind in ("done",):
            return 1.0
        if self.n_epochs <= 0 or self.n_batches <= 0 or self.kind in ("start", "load"):
            return 0.0
        return min(1.0, ((self.epoch - 1) + self.batch / self.n_batches) / self.n_epochs)


@dataclass
class TrainResult:
    """What a run returns (``result = yield from train(cfg)``, or :func:`run_training`)."""

    bundle: "ModelBundle | None"  # the best model (eval mode), None if no epoch finished
    best_path: Path | None
    last_path: Path | None
    epochs_done: int
    best_epoch: int | None
    best_metric: float | None
    monitor: str
    history: list[dict[str, Any]]
    stopped: bool
    reason: str
    summary: dict[str, Any]
    skipped: list[tuple[Path, str]]


# ----------------------------------------------------------------------------- helpers
def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def optimizer_state_path(checkpoint: str | Path) -> Path:
    """The sidecar file with optimizer state for a checkpoint: ``<stem>.optim.pt``."""
    p = Path(checkpoint)
    return p.with_name(p.name[: -len(p.suffix)] + ".optim.pt" if p.suffix else p.name + ".optim.pt")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    from .outputs import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _brief_exc(e: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one short line."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_out_of_memory(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(e, (MemoryError, oom)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        w in text for w in ("out of memory", "can't allocate memory", "not enough memory"))


def _write_errno(e: BaseException) -> int | None:
    """The OS error number behind a failed write (OSError, or 'os error N' in a library's message)."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = re.search(r"os error (\d+)", str(e))
    return int(m.group(1)) if m else None


def _classes_text(classes) -> str:
    """Class names for a message: all of them up to 10, else the count and the first three."""
    classes = list(classes)
    if len(classes) <= 10:
        return ", ".join(classes)
    return f"{len(classes)} classes: {', '.join(classes[:3])}, ..."


def _counts_text(classes, train_counts, val_counts) -> str:
    """'a: 8+2, b: 8+2' (training + validation images per class), summarised above 10 classes."""
    if len(classes) <= 10:
        return ", ".join(f"{c}: {train_counts[c]}+{val_counts[c]}" for c in classes)
    n = [train_counts[c] for c in classes]
    return f"{len(classes)} classes, {min(n)} to {max(n)} training images each"


def _output_names(out: Path, last: Path) -> list[Path]:
    """The files a run writes: best and last model, and their optimizer sidecars."""
    return [out, optimizer_state_path(out), last, optimizer_state_path(last)]


def _existing_folder(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists (the output folder is made at the first save)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _prepare_output(out: Path, last: Path) -> int:
    """Check that ``out``'s folder can be written (create and delete a probe file in it, or in its
    nearest existing ancestor: nothing is created before the data is checked) and remove temporary
    files left there by an interrupted run; returns how many were removed.  Raises TrainingError."""
    folder = out.parent
    if out.is_dir():
        raise TrainingError(f"The output {out} is a folder; give a file name ending in .safetensors.")
    probe_dir = _existing_folder(folder)
    if not probe_dir.is_dir():
        raise TrainingError(f"The output folder {folder} cannot be made: {probe_dir} is a file.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainingError(
            f"The output folder {folder} is not writable ({e.strerror or _brief_exc(e)}); "
            "make it writable or choose another output file.") from None
    removed = 0
    if probe_dir != folder:
        return removed
    for name in {p.name for p in _output_names(out, last)}:
        for stale in folder.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
                    removed += 1
    return removed


def _check_free_space(out: Path, last: Path, model, optimizer: str) -> None:
    """Refuse to start when the output folder cannot hold the checkpoints (two model + optimizer pairs
    and one temporary copy, less the files they replace)."""
    model_b = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    param_b = sum(p.numel() * p.element_size() for p in model.parameters())
    opt_b = param_b * (1 if optimizer.lower() == "sgd" else 2)
    existing = sum(p.stat().st_size for p in _output_names(out, last) if p.is_file())
    need = 2 * (model_b + opt_b) + max(model_b, opt_b) - existing
    try:
        free = shutil.disk_usage(_existing_folder(out.parent)).free
    except OSError:
        return
    if need > free:
        raise TrainingError(
            f"Only {free / 1e6:.1f} MB is free in {out.parent}, but the checkpoints need about "
            f"{need / 1e6:.1f} MB; free some space or choose another output folder.")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at optimisation step ``step`` (0-based) of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)  # step


def _make_optimizer(cfg: TrainConfig, params) -> "torch.optim.Optimizer":
    import torch

    name = cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def _set_trunk_frozen(model, head: str, frozen: bool) -> None:
    for name, p in model.named_parameters():
        if not (name == head or name.startswith(head + ".")):
            p.requires_grad_(not frozen)


def _batches(n: int, batch_size: int, labels: np.ndarray, weighting: str, seed: int, epoch: int,
             limit: int | None) -> list[np.ndarray]:
    """Index batches for one epoch (deterministic in seed and epoch)."""
    rng = np.random.default_rng([seed, epoch])
    if weighting == "sampler":
        counts = np.bincount(labels)
        w = 1.0 / counts[labels]
        order = rng.choice(n, size=n, replace=True, p=w / w.sum())
    else:
        order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, batch_size // 4):
        batches = batches[:-1]  # a tiny last batch only adds noise (and breaks BatchNorm at size 1)
    return batches[:limit] if limit else batches


def evaluate_arrays(model, x_iter, device, autocast) -> tuple[np.ndarray, float]:
    """Softmax probabilities and mean cross-entropy over (x, y) batches."""
    import torch
    import torch.nn.functional as F

    from .numerics import check_logits

    probs, loss_sum, n = [], torch.zeros((), device=device), 0
    was = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in x_iter:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            logits = logits.float()
            check_logits(model, logits, x, what="validation images")  # a NaN is not a metric
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            probs.append(torch.softmax(logits, 1).cpu())
            n += len(y)
    model.train(was)
    return torch.cat(probs).numpy(), float(loss_sum.item() / max(1, n))


# ----------------------------------------------------------------------------- the generator
def train(
    config: TrainConfig,
    data: ImageFolderData | None = None,
    val_data: ImageFolderData | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a classifier, yielding :class:`TrainEvent` s; returns a :class:`TrainResult`.

    Parameters
    ----------
    config : TrainConfig
        The recipe (see its fields); ``config.data_dir``/``config.csv`` are scanned unless ``data`` is given.
    data : ImageFolderData, optional
        Already-scanned images; split into train/validation by ``config.val_fraction`` and ``seed``
        (grouped by patient) unless ``val_data`` is given too.
    val_data : ImageFolderData, optional
        An explicit validation set (same classes as ``data``).

    Raises
    ------
    GradCamError / DatasetError
        Bad options or data (empty folder, one class, too few images), an output folder that cannot be
        written or is too full; one sentence.  Raised on the first ``next()``.
    TrainingError
        A failure part-way (an exception in a batch or in validation, out of memory, a checkpoint that
        could not be written); the sentence says where, why and which checkpoint is intact.
    """
    import torch
    import torch.nn.functional as F

    from .bundle import build_model, load_model, resolve_device, save_model
    from .metrics import classification_report
    from .models import canonical_name, head_layer, pretrained_weights_file

    cfg = config
    cfg.validate()
    stale = _prepare_output(Path(cfg.out), cfg.last_path)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    monitor = cfg.monitor
    higher_better = monitor != "val_loss"

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def stop_requested() -> bool:
        return bool((cfg.stop_event is not None and cfg.stop_event.is_set())
                    or (cfg.should_stop is not None and cfg.should_stop()))

    # ---- resume: weights + summary first (they fix the classes and the split)
    resumed: "ModelBundle | None" = None
    prev: dict[str, Any] = {}
    notes: list[str] = []
    if stale:
        notes.append(f"removed {stale} unfinished temporary file(s) of an interrupted run")
    if cfg.resume:
        resumed = load_model(cfg.resume, device=device)
        prev = dict(resumed.config.training or {})
        if prev.get("recipe"):
            notes.append(f"resumed from {Path(cfg.resume).name} after epoch {prev.get('epochs_done', 0)}")
        else:  # a model trained elsewhere: fine-tune it, counting epochs from 0
            prev = {}
            notes.append(f"starting from the weights in {Path(cfg.resume).name}")
    split_seed = int(prev.get("split_seed", cfg.seed))
    val_fraction = float(prev.get("val_fraction", cfg.val_fraction))
    group_pattern = prev["group_pattern"] if "group_pattern" in prev else cfg.group_pattern

    # ---- data
    classes = resumed.classes if resumed is not None else cfg.classes
    if data is None:
        data = scan_folder(cfg.data_dir, csv=cfg.csv, group_pattern=group_pattern, classes=classes)
    elif resumed is not None and list(data.classes) != resumed.classes:
        raise DatasetError(f"The data's classes ({_classes_text(data.classes)}) differ from the checkpoint's "
                           f"({_classes_text(resumed.classes)}).")
    data.check_trainable()
    if val_data is None:
        train_data, val_data = data.split(val_fraction, split_seed)
    else:
        train_data = data
        if list(val_data.classes) != list(data.classes):
            raise DatasetError(f"The validation classes ({_classes_text(val_data.classes)}) differ from the training "
                               f"classes ({_classes_text(data.classes)}).")
    if len(val_data) == 0:
        raise DatasetError("The validation split is empty; add images or raise the validation fraction.")
    classes = list(data.classes)
    n_classes = len(classes)

    # ---- model
    if resumed is not None:
        bundle = resumed
    else:
        arch = canonical_name(cfg.arch)
        pretrained: bool | str = cfg.pretrained
        if isinstance(pretrained, str) and pretrained.lower() in ("auto", "true", "false", "none", ""):
            if pretrained.lower() == "auto":
                weights = pretrained_weights_file(arch)
                pretrained = weights is not None and weights.is_file()
            else:
                pretrained = pretrained.lower() == "true"
        bundle = build_model(arch, classes, cfg.in_channels, cfg.image_size, pretrained=pretrained, device=device)
        notes.append("ImageNet initialisation" if pretrained else "trained from scratch")
    model = bundle.model
    head = head_layer(bundle.architecture, bundle.model)
    mc = bundle.config
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)

    aug = (Augmentation(cfg.rotation, cfg.translate, cfg.zoom, cfg.brightness, cfg.contrast, cfg.flips, cfg.erase,
                        cfg.erase_grid)
           if cfg.augment else None)
    # the data sets give unit-range images; augmentation and normalisation run batched on the device
    train_ds = ImageDataset(train_data, mc.in_channels, mc.input_size, mc.mean, mc.std, cache=cfg.cache, normalise=False)
    val_ds = ImageDataset(val_data, mc.in_channels, mc.input_size, mc.mean, mc.std, cache=cfg.cache)
    mean = torch.tensor(mc.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    inv_std = 1.0 / torch.tensor(mc.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    aug_gen = torch.Generator().manual_seed(cfg.seed)
    train_counts = train_data.class_counts()
    val_counts = val_data.class_counts()
    labels = train_data.labels

    weighting = cfg.class_weighting.lower()
    class_weight = None
    if weighting == "balanced":
        cnt = np.bincount(labels, minlength=n_classes).astype(np.float64)
        w = np.where(cnt > 0, len(labels) / (n_classes * np.maximum(cnt, 1)), 0.0)
        class_weight = torch.tensor(w, dtype=torch.float32, device=device)

    # ---- optimisation state
    _check_free_space(Path(cfg.out), cfg.last_path, model, cfg.optimizer)
    opt = _make_optimizer(cfg, model.parameters())
    use_amp = bool(cfg.amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    start_epoch = int(prev.get("epochs_done", 0))
    history: list[dict[str, Any]] = list(prev.get("history", []))
    best_metric = prev.get("best_metric")
    best_epoch = prev.get("best_epoch")
    global_step = int(prev.get("global_step", 0))
    if resumed is not None:
        side = optimizer_state_path(cfg.resume)
        state, unread = None, False
        if side.is_file():
            try:
                state = torch.load(side, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged sidecar only costs the optimizer state
                unread = True
        stamp = prev.get("checkpoint_id")
        if not isinstance(state, dict):
            notes.append("optimizer restarted (" + ("its saved state could not be read)" if unread or state is not None
                                                    else "no saved optimizer state)"))
        elif (state.get("checkpoint_id") != stamp if stamp or state.get("checkpoint_id")
              else int(state.get("epochs_done", -1)) != start_epoch):
            notes.append(f"optimizer restarted (the saved state in {side.name} belongs to another checkpoint, "
                         "as after an interrupted save)")
        else:
            try:
                opt.load_state_dict(state["optimizer"])
                if "scaler" in state and scaler.is_enabled():
                    scaler.load_state_dict(state["scaler"])
                notes.append("optimizer state restored")
            except (ValueError, KeyError, RuntimeError):
                opt = _make_optimizer(cfg, model.parameters())
                notes.append("optimizer restarted (its saved state did not fit)")

    scan_skipped = list(data.skipped) + (list(val_data.skipped) if val_data is not data else [])
    n_batches = len(_batches(len(train_ds), cfg.batch_size, labels, weighting, cfg.seed, 0, cfg.steps_per_epoch))
    total_steps = cfg.epochs * n_batches
    warmup_steps = int(round(cfg.warmup_epochs * n_batches))
    log_every = cfg.log_every or (1 if device.type == "cpu" else 10)
    best_path, last_path = Path(cfg.out), cfg.last_path
    best_state: dict[str, "torch.Tensor"] | None = None
    best_written = resumed is not None and best_path.is_file()
    if resumed is not None and not best_written:  # a new output file: its best starts with this run
        best_metric, best_epoch = None, None
    last_epoch: int | None = None  # the epoch held by last_path, once this run has written it

    def all_skipped() -> list[tuple[Path, str]]:
        """Files skipped by the scan, and images that failed to decode since (each once)."""
        seen = {p for p, _ in scan_skipped}
        out = list(scan_skipped)
        for p, why in train_ds.failed + val_ds.failed:
            if p not in seen:
                seen.add(p)
                out.append((p, why))
        return out

    def ev(kind: str, **kw) -> TrainEvent:
        kw.setdefault("n_epochs", cfg.epochs)
        kw.setdefault("n_batches", n_batches)
        return TrainEvent(kind, elapsed_s=elapsed(), **kw)

    def summary(epochs_done: int, reason: str = "", stamp: str | None = None) -> dict[str, Any]:
        skipped = all_skipped()
        return _jsonable({
            "epochs_done": epochs_done, "epochs_planned": cfg.epochs, "global_step": global_step,
            "monitor": monitor, "best_metric": best_metric, "best_epoch": best_epoch,
            "history": history, "data": str(data.root), "n_train": len(train_data), "n_val": len(val_data),
            "class_counts": {"train": train_counts, "val": val_counts},
            "split_seed": split_seed, "val_fraction": val_fraction, "group_pattern": group_pattern,
            "n_skipped": len(skipped), "skipped": [[p, why] for p, why in skipped[:100]],
            "device": str(device), "torch": torch.__version__, "recipe": cfg.recipe(), "finished": reason,
            **({"checkpoint_id": stamp} if stamp else {}),
        })

    def result(stopped: bool, reason: str, epochs_done: int) -> TrainResult:
        out_bundle = None
        if best_state is not None:
            model.load_state_dict(best_state)
        elif best_written and best_path.is_file():  # resumed, no improvement in this run: the stored best
            try:
                model.load_state_dict(load_model(best_path, device=device).model.state_dict())
            except GradCamError:
                pass
        if best_state is not None or epochs_done > 0:
            model.eval()
            bundle.config.training = summary(epochs_done, reason)
            out_bundle = bundle
        return TrainResult(out_bundle, best_path if best_written else None,
                           last_path if last_epoch is not None else None, epochs_done, best_epoch, best_metric,
                           monitor, history, stopped, reason, summary(epochs_done, reason), all_skipped())

    def kept() -> str:
        """What survives a failure, as the end of a sentence."""
        if last_epoch is not None:
            return f"the checkpoint of epoch {last_epoch} in {last_path} is intact; resume from it"
        if resumed is not None:
            return f"the checkpoint {cfg.resume} (epoch {start_epoch}) is unchanged; resume from it"
        return "no epoch had finished, so no model was written"

    def failure(e: Exception, where: str) -> GradCamError:
        """The one-sentence error for an exception raised ``where`` (e.g. "in epoch 2 at batch 3 of 5")."""
        if isinstance(e, GradCamError):
            return type(e)(f"{str(e).rstrip('.')}; {kept()}.")
        if _is_out_of_memory(e):
            return TrainingError(
                f"Training ran out of memory {where} ({_brief_exc(e, 100)}); use a smaller batch size (now "
                f"{cfg.batch_size}) or image size (now {mc.input_size}); {kept()}.")
        return TrainingError(f"Training failed {where} ({_brief_exc(e)}); {kept()}.")

    def write_failure(e: Exception, path: Path, epochs_done: int, what: str = "checkpoint") -> TrainingError:
        code = _write_errno(e)
        if code is None:
            with contextlib.suppress(OSError):
                if shutil.disk_usage(path.parent).free < 1 << 20:
                    code = errno.ENOSPC
        why = os.strerror(code) if code else _brief_exc(e)
        advice = {errno.ENOSPC: "free some space", getattr(errno, "EDQUOT", errno.ENOSPC): "free some space",
                  errno.EACCES: f"make {path.parent} writable", errno.EPERM: f"make {path.parent} writable",
                  errno.EROFS: f"make {path.parent} writable"}.get(code)
        survived = kept()
        if advice:
            survived += f" after you {advice}" if survived.endswith("resume from it") else f"; {advice}"
        return TrainingError(f"Could not write the {what} of epoch {epochs_done} to {path} ({why}); {survived}.")

    def save_checkpoint(path: Path, epochs_done: int) -> None:
        """Model, then optimizer sidecar, both atomic and stamped with the same id; raises TrainingError."""
        nonlocal last_epoch
        stamp = uuid.uuid4().hex
        bundle.config.training = summary(epochs_done, stamp=stamp)
        try:
            save_model(bundle, path)
        except Exception as e:
            raise write_failure(e, path, epochs_done) from e
        if path == last_path:
            last_epoch = epochs_done
        st = {"optimizer": opt.state_dict(), "epochs_done": epochs_done, "global_step": global_step,
              "checkpoint_id": stamp}
        if scaler.is_enabled():
            st["scaler"] = scaler.state_dict()
        side = optimizer_state_path(path)
        try:
            _atomic_torch_save(st, side)
        except Exception as e:
            with contextlib.suppress(OSError):  # the old state belongs to the weights just replaced
                side.unlink(missing_ok=True)
            raise write_failure(e, side, epochs_done, "optimizer state") from e

    # ---- go
    where = f"{data.root}" if cfg.csv is None else f"{cfg.csv}"
    msg = (f"{len(train_data)} training and {len(val_data)} validation images "
           f"({_counts_text(classes, train_counts, val_counts)}) from {where}; "
           f"{bundle.architecture} at {mc.input_size} px on {device}"
           + (f"; {', '.join(notes)}" if notes else "")
           + (f"; {len(scan_skipped)} file(s) skipped" if scan_skipped else ""))
    yield ev("start", epoch=start_epoch, message=msg, metrics={"skipped": [str(p) for p, _ in scan_skipped[:50]]})

    if start_epoch >= cfg.epochs:
        yield ev("done", epoch=start_epoch, message=f"Already trained {start_epoch} epochs; ask for more epochs to continue.")
        return result(False, "already done", start_epoch)

    # decode images into memory up front (progress: load events)
    total_imgs = len(train_ds) + len(val_ds)
    offset = 0
    for ds in (train_ds, val_ds):
        for done, _ in ds.load():
            if stop_requested():
                yield ev("stopped", epoch=start_epoch, message="Stopped while reading images; nothing was trained.")
                return result(True, "stopped", start_epoch)
            yield ev("load", epoch=start_epoch, batch=offset + done, n_batches=total_imgs, message="reading images")
        offset += len(ds)

    from torch.utils.data import DataLoader

    # validation batches: fixed, un-augmented (held in memory when the images fit)
    eval_bs = max(cfg.batch_size, 64)
    val_y = torch.as_tensor(val_ds.labels, dtype=torch.long)
    val_x = val_ds.tensors()[0] if val_ds.cache_enabled else None
    if val_x is not None and channels_last:
        val_x = val_x.contiguous(memory_format=torch.channels_last)

    def val_batches():
        if val_x is None:
            yield from DataLoader(val_ds, batch_size=eval_bs, num_workers=cfg.num_workers)
            return
        for i in range(0, len(val_y), eval_bs):
            yield val_x[i : i + eval_bs], val_y[i : i + eval_bs]

    pin = device.type == "cuda"
    bad_epochs = 0
    if history and best_metric is not None:
        for h in history[::-1]:
            if h.get("epoch") == best_epoch:
                break
            bad_epochs += 1
    model.train()
    epoch = start_epoch
    budget_s = 60.0 * cfg.max_minutes if cfg.max_minutes is not None else None
    t_train0 = elapsed()
    failed_before = len(train_ds.failed) + len(val_ds.failed)  # unreadable images met while loading: listed at the end
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        frozen = epoch <= cfg.freeze_epochs
        _set_trunk_frozen(model, head, frozen)
        batches = _batches(len(train_ds), cfg.batch_size, labels, weighting, cfg.seed, epoch, cfg.steps_per_epoch)
        if train_ds.fully_cached:  # gather uint8 batches straight from memory
            it = (((train_ds.cached_batch(ix), torch.as_tensor(labels[ix])) for ix in batches))
        else:
            it = iter(DataLoader(train_ds, batch_sampler=batches, num_workers=cfg.num_workers, pin_memory=pin))
        aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        seen, loss_val, train_time, ips = 0, None, 0.0, None
        t_ep = time.perf_counter()
        model.train()
        for b in range(len(batches)):
            if stop_requested():
                reason = f"Stopped during epoch {epoch}; " + (
                    f"the last checkpoint (epoch {epoch - 1}) is kept."
                    if last_epoch is not None or resumed is not None
                    else "no epoch had finished, so no model was written.")
                yield ev("stopped", epoch=epoch, batch=b, loss=loss_val, message=reason)
                return result(True, "stopped", epoch - 1)
            try:
                t0 = time.perf_counter()
                x, y = next(it)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x = x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x.float()
                if aug is not None:
                    x = aug(x, generator=aug_gen)
                x = (x - mean) * inv_std
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                step = global_step
                if budget_s is not None:  # with a time budget the schedule also follows the clock
                    used = (elapsed() - t_train0) / max(1e-9, budget_s - t_train0)
                    step = max(step, warmup_steps + int(used * (total_steps - warmup_steps)))
                lr = cfg.lr * lr_factor(step, total_steps, warmup_steps, cfg.schedule.lower())
                for g in opt.param_groups:
                    g["lr"] = lr
                with autocast():
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, weight=class_weight, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                global_step += 1
                loss_sum += loss.detach() * len(y)
                seen += len(y)
                if (b + 1) % log_every == 0 or b + 1 == len(batches):
                    loss_val = float(loss_sum.item() / seen)  # syncs the device: only every log_every batches
                    train_time += time.perf_counter() - t0
                    ips = seen / train_time if train_time > 0 else None
                else:
                    train_time += time.perf_counter() - t0
                if loss_val is not None and not math.isfinite(loss_val):
                    raise GradCamError(f"The training loss became {loss_val} in epoch {epoch}; "
                                       f"lower the learning rate (now {cfg.lr})")
            except Exception as e:
                raise failure(e, f"in epoch {epoch} at batch {b + 1} of {len(batches)}") from e
            yield ev("batch", epoch=epoch, batch=b + 1, loss=loss_val, images_per_s=ips, metrics={"lr": lr})
        del it

        # ---- validate
        try:
            probs, val_loss = evaluate_arrays(model, val_batches(), device, autocast)
            rep = classification_report(val_y.numpy(), probs, classes)
        except Exception as e:
            raise failure(e, f"while validating epoch {epoch}") from e
        n_failed = len(train_ds.failed) + len(val_ds.failed)
        metrics = {
            "epoch": epoch, "train_loss": loss_val, "val_loss": val_loss, "accuracy": rep["accuracy"],
            "balanced_accuracy": rep["balanced_accuracy"], "roc_auc": rep["roc_auc"],
            "sensitivity": rep["sensitivity"], "specificity": rep["specificity"],
            # the matrix grows with classes squared; above 20 it would bloat every checkpoint's header
            "confusion_matrix": rep["confusion_matrix"] if len(classes) <= 20 else None, "lr": lr,
            "frozen_trunk": frozen,
            "seconds": time.perf_counter() - t_ep, "train_seconds": train_time, "images_per_s": ips,
        }
        history.append(_jsonable(metrics))
        value = metrics[monitor]
        if value is None:  # AUC undefined (a class missing from validation)
            value = metrics["balanced_accuracy"]
        improved = best_metric is None or (
            value > best_metric + cfg.min_delta if higher_better else value < best_metric - cfg.min_delta)
        if improved:
            best_metric, best_epoch, bad_epochs = float(value), epoch, 0
        else:
            bad_epochs += 1
        yield ev("epoch", epoch=epoch, batch=len(batches), loss=loss_val, metrics=metrics, images_per_s=ips,
                 message=(f"epoch {epoch}/{cfg.epochs}: loss {loss_val:.4f}, val loss {val_loss:.4f}, "
                          f"accuracy {rep['accuracy']:.3f}, balanced {rep['balanced_accuracy']:.3f}, AUC "
                          + (f"{rep['roc_auc']:.3f}" if rep["roc_auc"] is not None else "n/a")
                          + (" (best)" if improved else "")
                          + (f"; {n_failed - failed_before} unreadable image(s) replaced by others of their class"
                             if n_failed > failed_before else "")))
        failed_before = n_failed

        # ---- checkpoints (atomic; a stop request is honoured only after they are written)
        save_checkpoint(last_path, epoch)
        yield ev("checkpoint", epoch=epoch, batch=len(batches), path=str(last_path), message=f"saved {last_path.name}")
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save_checkpoint(best_path, epoch)
            best_written = True
            yield ev("checkpoint", epoch=epoch, batch=len(batches), path=str(best_path),
                     message=f"saved {best_path.name} (best {monitor} {best_metric:.4f})")
        if cfg.patience is not None and bad_epochs >= cfg.patience and epoch < cfg.epochs:
            msg = (f"Early stopping after epoch {epoch}: no {monitor} improvement for {bad_epochs} epochs; "
                   f"best {best_metric:.4f} at epoch {best_epoch}.")
            res = result(False, "early stopping", epoch)
            yield ev("done", epoch=epoch, batch=len(batches), message=msg, metrics=res.summary, path=str(best_path))
            return res
        epoch_s = time.perf_counter() - t_ep
        if cfg.max_minutes is not None and epoch < cfg.epochs and elapsed() + epoch_s > 60 * cfg.max_minutes:
            msg = (f"Stopped after epoch {epoch} of {cfg.epochs}: another epoch would exceed the time budget of "
                   f"{cfg.max_minutes:g} min; best {monitor} {best_metric:.4f} at epoch {best_epoch}.")
            res = result(False, "time limit", epoch)
            yield ev("done", epoch=epoch, batch=len(batches), message=msg, metrics=res.summary, path=str(best_path))
            return res

    res = result(False, "finished", epoch)
    msg = (f"Finished {epoch} epochs in {elapsed():.0f} s; best {monitor} "
           + (f"{best_metric:.4f} at epoch {best_epoch}" if best_metric is not None else "n/a")
           + (f" -> {best_path}" if best_written else "")
           + (f"; {len(res.skipped)} file(s) skipped" if res.skipped else ""))
    yield ev("done", epoch=epoch, batch=n_batches, message=msg, metrics=res.summary, path=str(best_path))
    return res


def run_training(
    config: TrainConfig,
    data: ImageFolderData | None = None,
    val_data: ImageFolderData | None = None,
    callback: Callable[[TrainEvent], object] | None = None,
) -> TrainResult:
    """Run :func:`train` to the end (calling ``callback`` on every event) and return its result."""
    gen = train(config, data, val_data)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def evaluate_model(
    bundle: "ModelBundle",
    data: ImageFolderData,
    batch_size: int = 64,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """Probabilities of a bundle on every image of ``data``, with the same preprocessing as training.

    Returns (probs (N, n_classes) float32, labels (N,) int64, failed [(path, reason)]); images that
    fail to decode are dropped from both arrays.
    """
    import torch

    from .data import read_image
    from .errors import ImageError
    from .numerics import check_logits
    from .preprocess import bundle_tensor, check_image

    probs, labels, failed = [], [], []
    items = data.items
    model = bundle.model
    model.eval()
    n = len(items)
    for i in range(0, n, batch_size):
        imgs, ys = [], []
        for it in items[i : i + batch_size]:
            try:
                imgs.append(check_image(read_image(it.path)))
                ys.append(it.label)
            except ImageError as e:
                failed.append((it.path, str(e)))
        if imgs:
            with torch.inference_mode():
                x = bundle_tensor(bundle, imgs).to(bundle.device)
                logits = model(x).float()
                check_logits(bundle, logits, x, what=f"images {i}..{i + len(imgs) - 1} of {data.root}")
                probs.append(torch.softmax(logits, 1).cpu().numpy())
            labels.extend(ys)
        if progress is not None:
            progress(min(n, i + batch_size), n)
    p = np.concatenate(probs) if probs else np.zeros((0, bundle.n_classes), np.float32)
    return p, np.asarray(labels, dtype=np.int64), failed
