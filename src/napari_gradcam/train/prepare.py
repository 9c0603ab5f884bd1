"""Data preparation: scan the folder, split by patient, build the data sets and the class weights.

A resumed run re-creates its checkpoint's split from the stored seed, fraction, grouping rule and
split method (checkpoints written before the method was stored use :func:`~napari_gradcam.data.split_indices_v1`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ..data import SPLIT_METHOD, Augmentation, ImageDataset, ImageFolderData, scan_folder, typical_source_size
from ..errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelConfig
    from .config import TrainConfig


def classes_text(classes) -> str:
    """Class names for a message: all of them up to 10, else the count and the first three."""
    classes = list(classes)
    if len(classes) <= 10:
        return ", ".join(classes)
    return f"{len(classes)} classes: {', '.join(classes[:3])}, ..."


@dataclass
class Split:
    """How the images were split (stored in every checkpoint so that a resumed run splits the same way)."""

    seed: int
    val_fraction: float
    group_pattern: str | None
    method: str = SPLIT_METHOD

    @classmethod
    def for_run(cls, cfg: "TrainConfig", previous: dict[str, Any]) -> "Split":
        """The split of a new run (from ``cfg``) or of the checkpoint it resumes (``previous`` summary)."""
        if not previous:
            return cls(int(cfg.seed), float(cfg.val_fraction), cfg.group_pattern)
        return cls(int(previous.get("split_seed", cfg.seed)), float(previous.get("val_fraction", cfg.val_fraction)),
                   previous["group_pattern"] if "group_pattern" in previous else cfg.group_pattern,
                   previous.get("split_method", "v1"))

    def summary(self) -> dict[str, Any]:
        return {"split_seed": self.seed, "val_fraction": self.val_fraction, "group_pattern": self.group_pattern,
                "split_method": self.method}


@dataclass
class PreparedData:
    """The listing, its train/validation split and what the loop needs from them."""

    data: ImageFolderData
    train: ImageFolderData
    val: ImageFolderData
    split: Split
    source_size: int | None
    scan_skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes)

    def counts_text(self) -> str:
        """'a: 8+2, b: 8+2' (training + validation images per class), summarised above 10 classes."""
        tr, va = self.train.class_counts(), self.val.class_counts()
        if len(self.classes) <= 10:
            return ", ".join(f"{c}: {tr[c]}+{va[c]}" for c in self.classes)
        n = [tr[c] for c in self.classes]
        return f"{len(self.classes)} classes, {min(n)} to {max(n)} training images each"

    def summary(self) -> dict[str, Any]:
        """The data part of a checkpoint's summary."""
        return {"data": str(self.data.root), "n_train": len(self.train), "n_val": len(self.val),
                "class_counts": {"train": self.train.class_counts(), "val": self.val.class_counts()},
                "source_size": self.source_size, **self.split.summary()}


def prepare_data(cfg: "TrainConfig", split: Split, checkpoint_classes: list[str] | None = None,
                 data: ImageFolderData | None = None, val_data: ImageFolderData | None = None) -> PreparedData:
    """Scan (unless ``data`` is given), check and split the images.

    ``checkpoint_classes`` (a resumed model's) fix the classes and their order, else ``cfg.classes``.
    With ``val_data`` the images are not split.  Raises DatasetError (one sentence) for data that cannot
    be trained on.
    """
    classes = checkpoint_classes if checkpoint_classes is not None else cfg.classes
    if data is None:
        data = scan_folder(cfg.data_dir, csv=cfg.csv, group_pattern=split.group_pattern, classes=classes)
    elif checkpoint_classes is not None and list(data.classes) != list(classes):
        raise DatasetError(f"The data's classes ({classes_text(data.classes)}) differ from the checkpoint's "
                           f"({classes_text(classes)}).")
    data.check_trainable()
    if val_data is None:
        train_data, val_data = data.split(split.val_fraction, split.seed, split.method)
    else:
        train_data = data
        if list(val_data.classes) != list(data.classes):
            raise DatasetError(f"The validation classes ({classes_text(val_data.classes)}) differ from the training "
                               f"classes ({classes_text(data.classes)}).")
    if len(val_data) == 0:
        raise DatasetError("The validation split is empty; add images or raise the validation fraction.")
    skipped = list(data.skipped) + (list(val_data.skipped) if val_data is not data else [])
    return PreparedData(data, train_data, val_data, split, typical_source_size(train_data.paths), skipped)


def make_datasets(prep: PreparedData, mc: "ModelConfig", cache: bool | None) -> tuple[ImageDataset, ImageDataset]:
    """(training, validation) data sets at the model's input size.  Training images stay in unit range
    (augmentation and normalisation run batched on the device); validation images are normalised."""
    train_ds = ImageDataset(prep.train, mc.in_channels, mc.input_size, mc.mean, mc.std, cache=cache, normalise=False)
    val_ds = ImageDataset(prep.val, mc.in_channels, mc.input_size, mc.mean, mc.std, cache=cache)
    return train_ds, val_ds


def make_augmentation(cfg: "TrainConfig") -> Augmentation | None:
    """The training augmentation of ``cfg`` (None when switched off)."""
    if not cfg.augment:
        return None
    return Augmentation(rotation=cfg.rotation, translate=cfg.translate, zoom=cfg.zoom, brightness=cfg.brightness,
                        contrast=cfg.contrast, flips=cfg.flips, erase=cfg.erase, erase_grid=cfg.erase_grid,
                        gamma=cfg.gamma, fill=cfg.fill, blur=cfg.blur)


def unlearning_augmentation(cfg: "TrainConfig", mc: "ModelConfig", base: Callable | None,
                            classes: list[str] | None = None) -> Callable | None:
    """The training augmentation of ``cfg``: ``base``, preceded by the artifact paste of ``cfg.unlearn``
    (A-ClArC, :func:`napari_gradcam.unlearn.aclarc.build_paste`; read only when asked for)."""
    if not cfg.unlearn:
        return base
    from ..unlearn.aclarc import build_paste

    return build_paste(cfg.unlearn, mc.in_channels, mc.input_size, cfg.unlearn_p, base, classes)


def class_weights(labels: np.ndarray, n_classes: int, weighting: str, device: "torch.device") -> "torch.Tensor | None":
    """Loss weights inverse to class size (``weighting == "balanced"``), else None.

    Weight of class k: N / (n_classes * N_k), so that every class contributes equally; absent classes get 0.
    """
    if weighting != "balanced":
        return None
    import torch

    cnt = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(cnt > 0, len(labels) / (n_classes * np.maximum(cnt, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def load_images(datasets, stop_requested) -> Iterator[tuple[int, int] | None]:
    """Decode every image of ``datasets`` into memory: yields (done, total) and, when a stop is
    requested, None (then ends)."""
    total = sum(len(ds) for ds in datasets)
    offset = 0
    for ds in datasets:
        for done, _ in ds.load():
            if stop_requested():
                yield None
                return
            yield offset + done, total
        offset += len(ds)

