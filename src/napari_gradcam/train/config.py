"""The recipe of a training run: :class:`TrainConfig`, one field per option.

Each field carries its command-line help in its metadata (``help``, ``group``, ``choices``,
``metavar``, ``flag``), so that ``napari-gradcam train`` builds its options from this class
(:mod:`napari_gradcam.cli.train`) and the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..data import FILLS
from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    import threading

    import torch

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
CLASS_WEIGHTING = ("balanced", "sampler", "none")
MONITORS = ("val_loss", "balanced_accuracy", "accuracy", "roc_auc")
#: Time budget of a CPU run when ``max_minutes`` is None (0 switches it off).
CPU_MINUTES = 15.0
#: Input size when ``image_size`` is None: small enough for a CPU for our own network, else ImageNet's.
DEFAULT_SIZE = {"simple_cnn": 128}
IMAGENET_SIZE = 224


def option(default: Any = None, help: str = "", group: str = "run", *, factory: Callable | None = None,
           **cli: Any) -> Any:
    """A dataclass field with its command-line description in ``metadata``.

    ``cli`` keys: ``choices``, ``metavar``, ``flag`` (the option's spelling when it is not ``--field-name``;
    for a True-by-default switch, e.g. ``--no-augment``), ``cli=False`` (not a command-line option).
    """
    meta = {"help": help, "group": group, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run needs (all plain values, stored in the checkpoints' summary).

    Data: ``data_dir`` (class subfolders) or ``csv`` (path,label[,group]); ``classes`` picks and
    orders classes; ``val_fraction`` of the patients (see ``group_pattern``) of each class are held out.
    The defaults are the recipe measured in ``benchmarks/train_pneumonia.py``: on a CPU the run fills a
    15-minute budget (the learning rate anneals by the clock) and keeps the epoch of lowest validation loss.
    """

    # data
    data_dir: str | None = option(None, "folder with one subfolder of images per class", "data", cli=False)
    out: str = option("model.safetensors", "where to write the best model", "data", cli=False)
    csv: str | None = option(None, "CSV of path,label[,group] rows instead of class subfolders (paths relative "
                                   "to DATA_DIR)", "data", metavar="CSV")
    classes: list[str] | None = option(None, "use only these classes, in this order", "data", metavar="CLASS")
    group_pattern: str | None = option(
        "auto", "regex whose first group in the file name is the patient; 'auto': Kermany names "
                "(person123_..., IM-0115-...); 'none': every file on its own", "data", metavar="REGEX")
    val_fraction: float = option(0.2, "share of each class's patients held out for validation", "data", metavar="F")
    # model
    arch: str = option("simple_cnn", "simple_cnn, alexnet, vgg16, vgg19, resnet18, resnet50, mobilenet_v2, "
                                     "densenet121, efficientnet_b0, any torchvision classifier or timm:NAME", "model")
    in_channels: int = option(1, "1: grayscale, 3: RGB", "model", choices=(1, 3))
    image_size: int | None = option(
        None, "network input size: images are resized to N x N; default 128 for simple_cnn (CPU-friendly), "
              "224 for the others", "model", metavar="N")
    pretrained: bool | str = option(
        "auto", "ImageNet initialisation: 'auto' (when torchvision's weights file is in the cache), 'true', "
                "'false' or a path to a weights file; never downloads", "model", metavar="auto|true|false|PATH")
    freeze_epochs: int = option(0, "train only the head for the first N epochs", "model", metavar="N")
    # optimisation
    epochs: int = option(30, "passes over the training images (at most; see --max-minutes)", "optimisation",
                         metavar="N")
    batch_size: int = option(32, "images per optimisation step (per process with torchrun)", "optimisation",
                             metavar="N")
    lr: float = option(2e-3, "peak learning rate", "optimisation", metavar="LR")
    optimizer: str = option("adamw", "optimizer", "optimisation", choices=OPTIMIZERS)
    weight_decay: float = option(0.01, "L2 penalty (decoupled for AdamW)", "optimisation", metavar="W")
    momentum: float = option(0.9, "momentum (sgd only)", "optimisation", metavar="M")
    schedule: str = option("cosine", "learning-rate schedule, per batch ('step': x0.1 at 1/2 and 3/4 of the run)",
                           "optimisation", choices=SCHEDULES)
    warmup_epochs: float = option(0.5, "linear learning-rate warm-up, in epochs", "optimisation", metavar="E")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing (keeps the outputs from overconfidence)",
                                    "optimisation", metavar="S")
    class_weighting: str = option("balanced", "'balanced': loss weights inverse to class size; 'sampler': "
                                              "balanced sampling", "optimisation", choices=CLASS_WEIGHTING)
    # augmentation (training images only)
    augment: bool = option(True, "switch off augmentation (rotations, shifts, zoom, brightness, contrast, gamma, "
                                 "blur)",
                           "augmentation", flag="--no-augment")
    flips: bool = option(False, "add random horizontal flips (off for chest X-rays)", "augmentation")
    rotation: float = option(10.0, "random rotation, +/- degrees", "augmentation", metavar="DEG")
    translate: float = option(0.08, "random shift, +/- this fraction of the image size", "augmentation", metavar="F")
    zoom: float = option(0.12, "random scale in [1 - F, 1 + F]", "augmentation", metavar="F")
    brightness: float = option(0.2, "multiply intensities by [1 - F, 1 + F]", "augmentation", metavar="F")
    contrast: float = option(0.3, "scale deviations from the image's mean by [1 - F, 1 + F]", "augmentation",
                             metavar="F")
    gamma: float = option(0.3, "gamma x ** g with log g in [-F, F]", "augmentation", metavar="F")
    blur: float = option(0.8, "Gaussian blur with sigma in [0, S] pixels of the network input (the sharpness of "
                              "other scanners)", "augmentation", metavar="S")
    fill: str = option("reflection", "how the border uncovered by rotation, shift or zoom is filled: from the "
                                     "image itself (reflection, border) or with zeros (darker than any real image)",
                       "augmentation", choices=FILLS)
    erase: float = option(0.0, "hide-and-seek: hide each cell of a grid with probability P while training, so "
                               "that heatmaps cover all of the evidence (try 0.2-0.3)", "augmentation", metavar="P")
    erase_grid: int = option(4, "hide-and-seek grid, N x N cells", "augmentation", metavar="N")
    unlearn: str | None = option(
        None, "unlearn an audit's finding by augmentation (A-ClArC): its artifact (the box's content in the "
              "cluster's members) is pasted into training images of every class, labels kept; AUDIT_DIR:ID for one "
              "cluster, AUDIT_DIR for every likely shortcut", "augmentation", metavar="AUDIT_DIR[:ID]")
    unlearn_p: float = option(0.5, "with --unlearn, the share of every class's training images that carry the "
                                   "artifact (at least the finding's own share of its class)", "augmentation",
                              metavar="P")
    bn_batches: int = option(20, "before validation, re-estimate BatchNorm statistics with the epoch's weights over "
                                 "N training batches (0: keep the running averages)", "optimisation", metavar="N")
    # control
    patience: int | None = option(None, "early stopping after N epochs without improvement of --monitor; 0: never",
                                  "control", metavar="N", none_if_zero=True)
    monitor: str = option("val_loss", "validation metric that picks the best model", "control", choices=MONITORS)
    min_delta: float = option(0.0, "smallest change of --monitor that counts as an improvement", "control",
                              metavar="D")
    max_minutes: float | None = option(
        None, "time budget: the learning-rate schedule follows the clock and no epoch starts that would end "
              f"after M minutes; default {CPU_MINUTES:g} on a CPU, none on a GPU; 0: none", "control", metavar="M")
    steps_per_epoch: int | None = option(None, "cap batches per epoch (quick trials)", "control", metavar="N")
    amp: bool = option(True, "no mixed precision on CUDA", "control", flag="--no-amp")
    channels_last: bool | None = option(None, "memory layout; None: on for CPU and CUDA", "control", cli=False)
    log_every: int | None = option(None, "compute the loss value every N batches; None: 1 on CPU, 10 on GPU",
                                   "control", cli=False)
    cache: bool | None = option(None, "keep decoded images in memory; None: when they fit", "control", cli=False)
    # run
    resume: str | None = option(None, "continue from a checkpoint (weights, epoch count, optimizer)", "run",
                                metavar="CHECKPOINT")
    seed: int = option(0, "fixes the split, initialisation, batch order and augmentation", "run")
    device: str = option("auto", "'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'", "run")
    num_workers: int = option(0, "data-loading processes when images do not fit in memory", "run",
                              flag="--workers", metavar="N")
    # stop flags (not stored)
    stop_event: "threading.Event | None" = field(default=None, repr=False, compare=False, metadata={"cli": False})
    should_stop: Callable[[], bool] | None = field(default=None, repr=False, compare=False, metadata={"cli": False})

    @property
    def last_path(self) -> Path:
        """``<out stem>.last.safetensors``: the checkpoint written after every epoch."""
        out = Path(self.out)
        return out.with_name(out.name[: -len(out.suffix)] + ".last" + out.suffix if out.suffix else out.name + ".last")

    def recipe(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (without stop flags)."""
        skip = {"stop_event", "should_stop"}
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in skip}

    def input_size(self, arch: str) -> int:
        """``image_size``, or the default for ``arch`` (128 for simple_cnn, 224 otherwise)."""
        if self.image_size is not None:
            return int(self.image_size)
        return DEFAULT_SIZE.get(arch, IMAGENET_SIZE)

    def budget_minutes(self, device: "torch.device") -> float | None:
        """The time budget in minutes on ``device``, or None for none."""
        if self.max_minutes is None:
            return CPU_MINUTES if device.type == "cpu" else None
        return float(self.max_minutes) if float(self.max_minutes) > 0 else None

    def validate(self) -> None:
        """Raise GradCamError (one sentence) for impossible options."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise GradCamError(msg)

        def one_of(value: str, choices, what: str) -> None:
            need(str(value).lower() in choices, f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")

        _check_numbers(self)  # types and ranges of every number (bools, 1.5 epochs, NaN, -1 refused)
        need(int(self.epochs) >= 1, f"epochs must be at least 1, not {self.epochs}.")
        need(int(self.batch_size) >= 1, f"batch size must be at least 1, not {self.batch_size}.")
        need(float(self.lr) > 0, f"The learning rate must be positive, not {self.lr}.")
        need(0 < float(self.val_fraction) < 1, f"The validation fraction must be between 0 and 1, not {self.val_fraction}.")
        one_of(self.optimizer, OPTIMIZERS, "optimizer")
        one_of(self.schedule, SCHEDULES, "schedule")
        one_of(self.class_weighting, CLASS_WEIGHTING, "class weighting")
        one_of(self.fill, FILLS, "fill")
        need(self.monitor in MONITORS, f"Unknown monitor {self.monitor!r}; choose one of {', '.join(MONITORS)}.")
        need(self.image_size is None or 16 <= int(self.image_size) <= 4096,
             f"The image size must be between 16 and 4096 pixels, not {self.image_size}.")
        need(int(self.in_channels) in (1, 3), f"in_channels must be 1 or 3, not {self.in_channels}.")
        need(Path(self.out).suffix == ".safetensors", f"The output model must be a .safetensors file, not {self.out}.")
        need(self.data_dir is not None or self.csv is not None, "No data folder was given.")
        need(self.patience is None or int(self.patience) >= 1, f"patience must be at least 1 (or None), not {self.patience}.")
        need(self.max_minutes is None or float(self.max_minutes) >= 0,
             f"max_minutes must be positive (or 0 for no limit), not {self.max_minutes}.")
        need(0 <= float(self.erase) < 1, f"The hide-and-seek probability must be in [0, 1), not {self.erase}.")
        need(0 < float(self.unlearn_p) <= 1, f"unlearn_p must be in (0, 1], not {self.unlearn_p}.")
        need(self.unlearn is None or isinstance(self.unlearn, (str, Path)),
             f"unlearn must be an audit folder (AUDIT_DIR[:ID]), not {type(self.unlearn).__name__}.")
        need(0 <= float(self.label_smoothing) < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}.")


def _check_numbers(cfg: "TrainConfig") -> None:
    """ParameterError (one sentence naming the option) for a number of the wrong type or out of range."""
    from ..validate import check_int, check_number

    ints = {"epochs": 1, "batch_size": 1, "in_channels": 1, "freeze_epochs": 0, "erase_grid": 1, "num_workers": 0,
            "bn_batches": 0}
    for name, low in ints.items():
        check_int(getattr(cfg, name), name, low)
    check_int(cfg.seed, "seed", 0, 2**32 - 1)
    for name in ("image_size", "steps_per_epoch", "patience", "log_every"):
        if getattr(cfg, name) is not None:
            check_int(getattr(cfg, name), name, 16 if name == "image_size" else 1)
    check_number(cfg.lr, "The learning rate", above=0)
    check_number(cfg.val_fraction, "The validation fraction", above=0, below=1)
    for name in ("weight_decay", "warmup_epochs", "min_delta", "rotation", "gamma", "blur"):
        check_number(getattr(cfg, name), name, 0)
    check_number(cfg.unlearn_p, "unlearn_p", 0, 1)
    for name in ("momentum", "label_smoothing", "translate", "zoom", "brightness", "contrast", "erase"):
        check_number(getattr(cfg, name), name, 0, below=1)
    if cfg.max_minutes is not None:
        check_number(cfg.max_minutes, "max_minutes", 0)


def jsonable(v: Any) -> Any:
    """``v`` with paths as text, numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
