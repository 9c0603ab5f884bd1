"""What a training run reports: :class:`TrainEvent` while it runs, :class:`TrainResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

EVENT_KINDS = ("start", "load", "batch", "epoch", "warning", "checkpoint", "done", "stopped")


@dataclass
class TrainEvent:
    """One step of progress.

    Attributes
    ----------
    kind : str
        ``"start"`` (set-up done; message describes data and model), ``"load"`` (decoding images
        into memory: ``batch``/``n_batches`` are images done/total), ``"batch"`` (one optimisation step
        done), ``"epoch"`` (epoch done; ``metrics`` has validation results), ``"warning"`` (something
        looks wrong, e.g. validation inputs that differ from the training inputs; said once, in
        ``message``), ``"checkpoint"`` (a file was written: ``path``), ``"done"`` (finished or stopped
        early by patience or the time budget) or ``"stopped"`` (stopped on request).
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
