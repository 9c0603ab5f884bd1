"""When to keep a model and when to stop: the best epoch by a validation metric, patience, a time budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BestTracker:
    """The best epoch so far by ``monitor`` (``val_loss`` lower is better; the others higher)."""

    monitor: str
    min_delta: float = 0.0
    best: float | None = None
    epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one

    @property
    def higher_better(self) -> bool:
        return self.monitor != "val_loss"

    @classmethod
    def resume(cls, monitor: str, min_delta: float, history: list[dict[str, Any]], best: float | None,
               epoch: int | None) -> "BestTracker":
        """The tracker of a resumed run: its best, and the epochs of its history since then."""
        bad = 0
        if history and best is not None:
            for h in history[::-1]:
                if h.get("epoch") == epoch:
                    break
                bad += 1
        return cls(monitor, min_delta, best, epoch, bad)

    def value(self, metrics: dict[str, Any]) -> float:
        """The monitored value of an epoch's metrics (balanced accuracy where the AUC is undefined)."""
        v = metrics.get(self.monitor)
        return float(metrics["balanced_accuracy"] if v is None else v)

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Record an epoch; True if it is the new best."""
        v = self.value(metrics)
        better = self.best is None or (
            v > self.best + self.min_delta if self.higher_better else v < self.best - self.min_delta)
        if better:
            self.best, self.epoch, self.bad_epochs = v, epoch, 0
        else:
            self.bad_epochs += 1
        return better


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a new best (None: never)."""

    patience: int | None

    def should_stop(self, tracker: BestTracker) -> bool:
        return self.patience is not None and tracker.bad_epochs >= self.patience


@dataclass
class TimeBudget:
    """A wall-clock budget of ``seconds`` (None: none) for the whole run; training starts at ``start`` s.

    The learning-rate schedule follows the clock when that is further along than the step count
    (:meth:`fraction`), and no epoch starts that would end after the budget (:meth:`room_for`).
    """

    seconds: float | None
    start: float = 0.0

    def fraction(self, elapsed: float) -> float | None:
        """Share of the training time used at ``elapsed`` seconds, or None without a budget."""
        if self.seconds is None:
            return None
        return (elapsed - self.start) / max(1e-9, self.seconds - self.start)

    def room_for(self, elapsed: float, epoch_seconds: float) -> bool:
        """Whether another epoch as long as the last one ends within the budget."""
        return self.seconds is None or elapsed + epoch_seconds <= self.seconds
