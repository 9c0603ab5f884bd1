"""Validation: probabilities on the held-out images, the epoch's metrics, and the train/validation mismatch guard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .distributed import Comm

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data import ImageDataset


def evaluate_arrays(model, batches: Iterable, device, autocast) -> tuple[np.ndarray, float, int]:
    """Softmax probabilities (N, n_classes) float32, summed cross-entropy and N over (x, y) batches."""
    import torch
    import torch.nn.functional as F

    from ..numerics import check_logits

    probs, loss_sum, n = [], torch.zeros((), device=device), 0
    was = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            logits = logits.float()
            check_logits(model, logits, x, what="validation images")  # a NaN is not a metric
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            probs.append(torch.softmax(logits, 1).cpu())
            n += len(y)
    model.train(was)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    return p, float(loss_sum.item()), n


class Validator:
    """The validation images (this process's share of them, held in memory when cached) and how to score them."""

    def __init__(self, val_ds: "ImageDataset", batch_size: int, channels_last: bool, num_workers: int,
                 comm: Comm) -> None:
        import torch

        self.ds, self.comm, self.num_workers = val_ds, comm, num_workers
        self.batch_size = max(batch_size, 64)
        self.labels = np.asarray(val_ds.labels, dtype=np.int64)
        self.indices = np.asarray(comm.shard(len(val_ds)), dtype=np.int64)
        self.x = None
        if val_ds.cache_enabled:
            self.x = torch.stack([val_ds.normalise(val_ds.unit(int(i))) for i in self.indices]) if len(self.indices) \
                else torch.zeros((0, val_ds.in_channels, val_ds.input_size, val_ds.input_size))
            if channels_last:
                self.x = self.x.contiguous(memory_format=torch.channels_last)

    def batches(self):
        """(x, y) batches of this process's validation images, normalised, without augmentation."""
        import torch

        y = torch.as_tensor(self.labels[self.indices], dtype=torch.long)
        if self.x is None:
            from torch.utils.data import DataLoader, Subset

            yield from DataLoader(Subset(self.ds, self.indices.tolist()), batch_size=self.batch_size,
                                  num_workers=self.num_workers)
            return
        for i in range(0, len(y), self.batch_size):
            yield self.x[i : i + self.batch_size], y[i : i + self.batch_size]

    def run(self, model, device, autocast) -> tuple[np.ndarray, float]:
        """Probabilities (N, n_classes) of all validation images (gathered from every process, in data set
        order) and their mean cross-entropy."""
        probs, loss_sum, n = evaluate_arrays(model, self.batches(), device, autocast)
        parts = self.comm.gather((self.indices, probs, loss_sum, n))
        full = np.zeros((len(self.labels), len(self.ds.data.classes)), np.float32)
        for idx, p, _, _ in parts:
            if len(idx):
                full[idx] = p
        return full, sum(s for _, _, s, _ in parts) / max(1, sum(k for _, _, _, k in parts))


def epoch_metrics(report: dict[str, Any], epoch: int, train_loss: float | None, val_loss: float,
                  n_classes: int, **extra: Any) -> dict[str, Any]:
    """The history row of an epoch: losses, the validation report's figures, and ``extra`` (lr, timings...)."""
    return {
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"], "roc_auc": report["roc_auc"],
        "sensitivity": report["sensitivity"], "specificity": report["specificity"],
        # the matrix grows with classes squared; above 20 it would bloat every checkpoint's header
        "confusion_matrix": report["confusion_matrix"] if n_classes <= 20 else None, **extra,
    }


def epoch_message(m: dict[str, Any], n_epochs: int, improved: bool) -> str:
    """One line for an epoch event."""
    auc = m.get("roc_auc")
    return (f"epoch {m['epoch']}/{n_epochs}: loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, "
            f"accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, AUC "
            + (f"{auc:.3f}" if auc is not None else "n/a") + (" (best)" if improved else ""))


@dataclass
class MismatchGuard:
    """Says once when validation looks like training and validation inputs differ.

    The sign: validation accuracy at one class's rate, usually the majority's (nearly every image called
    that class), while the ranking is good (ROC AUC >= ``auc``) or the training loss is low (below
    ``loss_share`` of a guess's loss, ln(n_classes)), for ``epochs`` epochs in a row.  (BatchNorm statistics
    are re-estimated before each validation, so a slow start does not look like this.)  The usual cause is an augmentation that changes
    image statistics (zero-filled borders): BatchNorm's running statistics follow the augmented images,
    so validation logits shift while their order stays right.
    """

    auc: float = 0.8
    loss_share: float = 0.4
    epochs: int = 2
    streak: int = 0
    said: bool = False

    def check(self, metrics: dict[str, Any], labels: np.ndarray, classes: list[str]) -> str | None:
        """The warning for this epoch, or None (also after it has been said once)."""
        cm = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.int64)
        labels = np.asarray(labels)
        if self.said or len(labels) == 0 or cm.ndim != 2 or cm.size == 0:
            return None
        predicted = cm.sum(0)
        k = int(predicted.argmax())
        share = np.mean(labels == k)  # the accuracy of calling every image class k
        one_class = predicted[k] >= 0.9 * predicted.sum() and abs(metrics["accuracy"] - share) <= 0.05
        auc, loss = metrics.get("roc_auc"), metrics.get("train_loss")
        ranks_well = auc is not None and auc >= self.auc
        fits = loss is not None and loss <= self.loss_share * math.log(len(classes))
        self.streak = self.streak + 1 if one_class and (ranks_well or fits) else 0
        if self.streak < self.epochs:
            return None
        self.said = True
        why = (f"ROC AUC is {auc:.2f}: the model ranks the images but its outputs are shifted" if ranks_well
               else f"the training loss is {loss:.3f}: the model fits its training images but not these")
        return (f"Validation accuracy {metrics['accuracy']:.3f} is the share of class {classes[k]!r} (nearly every "
                f"image is called {classes[k]!r}), although {why}, so training and validation inputs likely differ "
                "(an augmentation that changes image statistics, such as zero-filled borders, or a different "
                "preprocessing); compare a run without augmentation.")
