"""The orchestrator: :func:`train` sets a run up from the pieces of this package and yields its events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

from ..data import ImageFolderData
from ..errors import GradCamError, TrainingError
from ..generators import run_to_end
from ..unlearn.aclarc import unlearned_record
from .checkpoints import CheckpointWriter, check_free_space, prepare_output, read_optimizer_state
from .config import TrainConfig, jsonable
from .distributed import Comm, local_device, process_group, world_from_env
from .epoch import EpochStats, StepParts, batch_source, epoch_batches, recalibrate_batchnorm, run_epoch
from .events import TrainEvent, TrainResult
from .faults import run_failure
from .prepare import (PreparedData, Split, class_weights, load_images, make_augmentation, make_datasets,
                      prepare_data, unlearning_augmentation)
from .setup import build_bundle, load_resume, lr_factor, make_optimisation, set_trunk_frozen
from .stopping import BestTracker, EarlyStopping, TimeBudget
from .validation import MismatchGuard, Validator, epoch_message, epoch_metrics

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle

Events = Generator[TrainEvent, None, TrainResult]


def train(config: TrainConfig, data: ImageFolderData | None = None,
          val_data: ImageFolderData | None = None) -> Events:
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

    Under ``torchrun`` every process runs this with the same arguments: each trains on its share of
    every epoch's batches (DistributedDataParallel), validation is shared out and gathered, and rank 0
    alone writes checkpoints; all processes yield the same epoch events.

    Raises
    ------
    GradCamError / DatasetError
        Bad options or data (empty folder, one class, too few images), an output folder that cannot be
        written or is too full; one sentence.  Raised on the first ``next()``.
    TrainingError
        A failure part-way (an exception in a batch or in validation, out of memory, a checkpoint that
        could not be written); the sentence says where, why and which checkpoint is intact.
    """
    config.validate()
    stale = prepare_output(Path(config.out), config.last_path)
    _, world, local_rank = world_from_env()
    from ..bundle import resolve_device

    device = resolve_device(local_device(config.device, local_rank) if world > 1 else config.device)
    with process_group(device) as comm:
        trainer = Trainer(config, device, comm, data, val_data, stale)
        try:
            return (yield from trainer.run())
        finally:
            trainer.release_ddp()


def run_training(
    config: TrainConfig,
    data: ImageFolderData | None = None,
    val_data: ImageFolderData | None = None,
    callback: Callable[[TrainEvent], object] | None = None,
) -> TrainResult:
    """Run :func:`train` to the end (calling ``callback`` on every event) and return its result."""
    return run_to_end(train(config, data, val_data), callback)


class Trainer:
    """One training run: the set-up in :meth:`__init__` (data, model, optimisation, checkpoints,
    stopping policies), then :meth:`run` (a generator of events) drives the epochs."""

    def __init__(self, cfg: TrainConfig, device: "torch.device", comm: Comm, data: ImageFolderData | None,
                 val_data: ImageFolderData | None, stale: int = 0) -> None:
        import torch

        from ..models import head_layer

        self.cfg, self.device, self.comm = cfg, device, comm
        self.t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.notes: list[str] = [f"removed {stale} unfinished temporary file(s) of an interrupted run"] if stale else []
        resumed, prev, note = load_resume(cfg, device)
        self.resumed = resumed
        self.notes += [note] if note else []
        self.prep: PreparedData = prepare_data(cfg, Split.for_run(cfg, prev), resumed.classes if resumed else None,
                                               data, val_data)
        self.classes = self.prep.classes
        if resumed is not None:
            self.bundle: "ModelBundle" = resumed
        else:
            self.bundle, note = build_bundle(cfg, self.classes, device)
            self.notes.append(note)
        self.model = self.bundle.model
        self.head = head_layer(self.bundle.architecture, self.bundle.model)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_ds, self.val_ds = make_datasets(self.prep, self.bundle.config, cfg.cache)
        self._set_up_optimisation(prev)
        self._set_up_policies(prev)

    # ------------------------------------------------------------------ set-up
    def _set_up_optimisation(self, prev: dict[str, Any]) -> None:
        import torch

        cfg, mc = self.cfg, self.bundle.config
        check_free_space(Path(cfg.out), cfg.last_path, self.model, cfg.optimizer)
        self.optim = make_optimisation(cfg, self.model, self.device)
        self.start_epoch = int(prev.get("epochs_done", 0))
        self.global_step = int(prev.get("global_step", 0))
        if self.resumed is not None:
            state, note = read_optimizer_state(cfg.resume, prev, self.start_epoch)
            self.notes.append(self.optim.restore(state, cfg, self.model) if state is not None else note)
        self.weighting = cfg.class_weighting.lower()
        self.labels = self.prep.train.labels
        self.n_batches = len(self._batches(0))
        self.total_steps = cfg.epochs * self.n_batches
        self.warmup_steps = int(round(cfg.warmup_epochs * self.n_batches))
        self.aug_gen = torch.Generator().manual_seed(cfg.seed)
        self.parts = StepParts(
            self.model, self.optim, self.device,
            torch.tensor(mc.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1),
            1.0 / torch.tensor(mc.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1),
            unlearning_augmentation(cfg, mc, make_augmentation(cfg), self.classes), self.aug_gen, self.channels_last,
            class_weights(self.labels, len(self.classes), self.weighting, self.device), float(cfg.label_smoothing))

    def _set_up_policies(self, prev: dict[str, Any]) -> None:
        cfg = self.cfg
        self.history: list[dict[str, Any]] = list(prev.get("history", []))
        self.writer = CheckpointWriter(Path(cfg.out), cfg.last_path, cfg.resume if self.resumed else None,
                                       self.start_epoch)
        self.tracker = BestTracker.resume(cfg.monitor, cfg.min_delta, self.history, prev.get("best_metric"),
                                          prev.get("best_epoch"))
        if prev.get("monitor", cfg.monitor) != cfg.monitor:  # another metric picks the best now: replay
            self.tracker = BestTracker(cfg.monitor, cfg.min_delta)
            for h in self.history:
                self.tracker.update(h, h["epoch"])
        if self.resumed is not None and not self.writer.best_written:  # a new output: its best starts here
            self.tracker.best, self.tracker.epoch = None, None
        self.early = EarlyStopping(cfg.patience)
        minutes = cfg.budget_minutes(self.device)
        self.budget = TimeBudget(None if minutes is None else 60.0 * minutes)
        self.guard = MismatchGuard()
        self.best_state: dict[str, "torch.Tensor"] | None = None
        self.log_every = cfg.log_every or (1 if self.device.type == "cpu" else 10)

    def _batches(self, epoch: int):
        cfg = self.cfg
        return epoch_batches(len(self.train_ds), cfg.batch_size, self.labels, self.weighting, cfg.seed, epoch,
                             cfg.steps_per_epoch, self.comm)

    # ------------------------------------------------------------------ reporting
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def stop_requested(self) -> bool:
        cfg = self.cfg
        return bool((cfg.stop_event is not None and cfg.stop_event.is_set())
                    or (cfg.should_stop is not None and cfg.should_stop()))

    def event(self, kind: str, **kw) -> TrainEvent:
        kw.setdefault("n_epochs", self.cfg.epochs)
        kw.setdefault("n_batches", self.n_batches)
        return TrainEvent(kind, elapsed_s=self.elapsed(), **kw)

    def all_skipped(self) -> list[tuple[Path, str]]:
        """Files skipped by the scan, and images that failed to decode since (each once)."""
        seen = {p for p, _ in self.prep.scan_skipped}
        out = list(self.prep.scan_skipped)
        for p, why in self.train_ds.failed + self.val_ds.failed:
            if p not in seen:
                seen.add(p)
                out.append((p, why))
        return out

    def summary(self, epochs_done: int, reason: str = "", stamp: str | None = None,
                weights_epoch: int | None = None) -> dict[str, Any]:
        """The checkpoint summary (``config.training``) of a file holding the weights of ``weights_epoch``."""
        import torch

        skipped = self.all_skipped()
        row = next((h for h in self.history if h.get("epoch") == weights_epoch), {})
        threshold = row.get("threshold")
        return jsonable({
            "epochs_done": epochs_done, "epochs_planned": self.cfg.epochs, "global_step": self.global_step,
            "monitor": self.tracker.monitor, "best_metric": self.tracker.best, "best_epoch": self.tracker.epoch,
            "history": self.history, **self.prep.summary(),
            "n_skipped": len(skipped), "skipped": [[p, why] for p, why in skipped[:100]],
            "device": str(self.device), "world_size": self.comm.world, "torch": torch.__version__,
            "recipe": self.cfg.recipe(), "finished": reason, **unlearned_record(self.parts.augmentation),
            **({"threshold": threshold, "threshold_class": self.classes[1]} if threshold is not None else {}),
            **({"checkpoint_id": stamp} if stamp else {}),
        })

    def result(self, stopped: bool, reason: str, epochs_done: int) -> TrainResult:
        """The run's result; the model holds the best weights (from memory, or the stored best file)."""
        from ..bundle import load_model

        w = self.writer
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif w.best_written and w.best_path.is_file():  # resumed, no improvement in this run: the stored best
            try:
                self.model.load_state_dict(load_model(w.best_path, device=self.device).model.state_dict())
            except GradCamError:
                pass
        out_bundle = None
        if self.best_state is not None or epochs_done > 0:
            self.model.eval()
            self.bundle.config.training = self.summary(epochs_done, reason, weights_epoch=self.tracker.epoch)
            out_bundle = self.bundle
        return TrainResult(out_bundle, w.best_path if w.best_written else None,
                           w.last_path if w.last_epoch is not None else None, epochs_done, self.tracker.epoch,
                           self.tracker.best, self.tracker.monitor, self.history, stopped, reason,
                           self.summary(epochs_done, reason, weights_epoch=self.tracker.epoch), self.all_skipped())

    def failure(self, e: Exception, where: str) -> GradCamError:
        return run_failure(e, where, self.writer.kept(), self.cfg.batch_size, self.bundle.config.input_size)

    def agreed(self, error: GradCamError | None) -> None:
        """Raise on every process if any has an ``error`` (this process's own, else the first one's message)."""
        first = self.comm.first_error(error, self.device)
        if error is not None:
            raise error
        if first is not None:
            raise TrainingError(f"Process {first[0]} of {self.comm.world}: {first[1]}")

    # ------------------------------------------------------------------ the run
    def run(self) -> Events:
        """Yield the events of the run; return its :class:`TrainResult`."""
        cfg, prep = self.cfg, self.prep
        where = f"{prep.data.root}" if cfg.csv is None else f"{cfg.csv}"
        procs = f" x {self.comm.world} processes" if self.comm.distributed else ""
        msg = (f"{len(prep.train)} training and {len(prep.val)} validation images ({prep.counts_text()}) from "
               f"{where}; {self.bundle.architecture} at {self.bundle.config.input_size} px on {self.device}{procs}"
               + (f"; {', '.join(self.notes)}" if self.notes else "")
               + (f"; {len(prep.scan_skipped)} file(s) skipped" if prep.scan_skipped else ""))
        yield self.event("start", epoch=self.start_epoch, message=msg,
                         metrics={"skipped": [str(p) for p, _ in prep.scan_skipped[:50]]})
        if self.start_epoch >= cfg.epochs:
            yield self.event("done", epoch=self.start_epoch,
                             message=f"Already trained {self.start_epoch} epochs; ask for more epochs to continue.")
            return self.result(False, "already done", self.start_epoch)
        if not (yield from self._load()):
            yield self.event("stopped", epoch=self.start_epoch, message="Stopped while reading images; nothing was trained.")
            return self.result(True, "stopped", self.start_epoch)
        self.validator = Validator(self.val_ds, cfg.batch_size, self.channels_last, cfg.num_workers, self.comm)
        self.budget.start = self.elapsed()
        self.failed_before = len(self.train_ds.failed) + len(self.val_ds.failed)
        epoch = self.start_epoch
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            stats = yield from self._train_epoch(epoch)
            if stats.stopped_before is not None:
                kept = (f"the last checkpoint (epoch {epoch - 1}) is kept."
                        if self.writer.last_epoch is not None or self.resumed is not None
                        else "no epoch had finished, so no model was written.")
                yield self.event("stopped", epoch=epoch, batch=stats.stopped_before, loss=stats.loss,
                                 message=f"Stopped during epoch {epoch}; {kept}")
                return self.result(True, "stopped", epoch - 1)
            improved = yield from self._validate(epoch, stats)
            yield from self._save_checkpoints(epoch, improved)
            reason = self._stop_reason(epoch)
            if reason is not None:
                res = self.result(False, reason[0], epoch)
                yield self.event("done", epoch=epoch, batch=self.n_batches, message=reason[1], metrics=res.summary,
                                 path=str(self.writer.best_path))
                return res
        res = self.result(False, "finished", epoch)
        t = self.tracker
        msg = (f"Finished {epoch} epochs in {self.elapsed():.0f} s; best {t.monitor} "
               + (f"{t.best:.4f} at epoch {t.epoch}" if t.best is not None else "n/a")
               + (f" -> {self.writer.best_path}" if self.writer.best_written else "")
               + (f"; {len(res.skipped)} file(s) skipped" if res.skipped else ""))
        yield self.event("done", epoch=epoch, batch=self.n_batches, message=msg, metrics=res.summary,
                         path=str(self.writer.best_path))
        return res

    def _load(self) -> Generator[TrainEvent, None, bool]:
        """Decode the images into memory (load events); False if a stop was requested (on any process)."""
        stopped = False
        for progress in load_images((self.train_ds, self.val_ds), self.stop_requested):
            if progress is None:
                stopped = True
                break
            yield self.event("load", epoch=self.start_epoch, batch=progress[0], n_batches=progress[1],
                             message="reading images")
        return not self.comm.agree([float(stopped)], self.device)[0]

    def _train_model(self, frozen: bool):
        """The module that trains this epoch: the model, or a DistributedDataParallel wrapper of it (made
        anew when freezing changes which parameters train)."""
        if not self.comm.distributed:
            return self.model
        if getattr(self, "_ddp_frozen", None) is not frozen:
            from .distributed import wrap_ddp

            self._ddp = wrap_ddp(self.model, self.device)
            self._ddp_frozen = frozen
        return self._ddp

    def release_ddp(self) -> None:
        """Free the DistributedDataParallel wrapper (its reducer holds the process group's work) while the
        group still exists: one left to the interpreter's exit aborted a process now and then (gloo)."""
        if getattr(self, "_ddp", None) is not None:
            import gc

            self._ddp = self._ddp_frozen = None
            gc.collect()

    def _train_epoch(self, epoch: int) -> Generator[TrainEvent, None, EpochStats]:
        cfg = self.cfg
        frozen = epoch <= cfg.freeze_epochs
        set_trunk_frozen(self.model, self.head, frozen)
        self.parts.model = self._train_model(frozen)
        batches = self._batches(epoch)
        source = batch_source(self.train_ds, batches, cfg.num_workers, self.device.type == "cuda")
        self.aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch + 7919 * self.comm.rank)
        self.frozen, self.t_epoch = frozen, time.perf_counter()
        self.model.train()

        def learning_rate(step: int, share: float | None) -> float:
            if share is not None:  # with a time budget the schedule also follows the clock
                step = max(step, self.warmup_steps + int(share * (self.total_steps - self.warmup_steps)))
            return cfg.lr * lr_factor(step, self.total_steps, self.warmup_steps, cfg.schedule.lower())

        steps = run_epoch(self.parts, source, len(batches), epoch, self.global_step, cfg.lr, learning_rate,
                          lambda: self.budget.fraction(self.elapsed()), self.stop_requested,
                          lambda e, b: self.failure(e, f"in epoch {epoch} at batch {b + 1} of {len(batches)}"),
                          self.comm, self.log_every)
        while True:
            try:
                b, loss, ips, lr = next(steps)
            except StopIteration as done:
                stats: EpochStats = done.value
                break
            self.global_step += 1
            yield self.event("batch", epoch=epoch, batch=b, loss=loss, images_per_s=ips, metrics={"lr": lr})
        return stats

    def _validate(self, epoch: int, stats: EpochStats) -> Generator[TrainEvent, None, bool]:
        """Score the held-out images; yield the epoch event (and a mismatch warning once); True if best."""
        from ..decision import choose_threshold
        from ..metrics import classification_report

        try:
            batches = self._batches(epoch)[: self.cfg.bn_batches]
            recalibrate_batchnorm(self.parts, batch_source(self.train_ds, batches, self.cfg.num_workers, False),
                                  len(batches))
            self.comm.sync_buffers(self.model)
            probs, val_loss = self.validator.run(self.model, self.device, self.optim.autocast)
            report = classification_report(self.validator.labels, probs, self.classes)
        except Exception as e:
            raise self.failure(e, f"while validating epoch {epoch}") from e
        metrics = epoch_metrics(
            report, epoch, stats.loss, val_loss, len(self.classes), lr=stats.lr, frozen_trunk=self.frozen,
            threshold=choose_threshold(self.validator.labels, probs), seconds=time.perf_counter() - self.t_epoch,
            train_seconds=stats.train_seconds, images_per_s=stats.images_per_s)
        self.history.append(jsonable(metrics))
        improved = self.tracker.update(metrics, epoch)
        n_failed = len(self.train_ds.failed) + len(self.val_ds.failed)
        message = epoch_message(metrics, self.cfg.epochs, improved) + (
            f"; {n_failed - self.failed_before} unreadable image(s) replaced by others of their class"
            if n_failed > self.failed_before else "")
        self.failed_before = n_failed
        yield self.event("epoch", epoch=epoch, batch=self.n_batches, loss=stats.loss, metrics=metrics,
                         images_per_s=stats.images_per_s, message=message)
        warning = self.guard.check(metrics, self.validator.labels, self.classes)
        if warning:
            yield self.event("warning", epoch=epoch, batch=self.n_batches, message=warning)
        return improved

    def _save(self, path: Path, epoch: int) -> None:
        """Rank 0 writes the checkpoint; every process learns whether it worked (and fails alike if not)."""
        error = None
        if self.comm.is_main:
            try:
                self.writer.save(path, self.bundle, lambda stamp: self.summary(epoch, stamp=stamp, weights_epoch=epoch),
                                 self.optim.state(self.global_step), epoch)
            except TrainingError as e:
                error = e
        self.agreed(error)
        if not self.comm.is_main:  # what rank 0 wrote, for this process's messages
            self.writer.last_epoch = epoch if path == self.writer.last_path else self.writer.last_epoch
            self.writer.best_written = self.writer.best_written or path == self.writer.best_path

    def _save_checkpoints(self, epoch: int, improved: bool) -> Generator[TrainEvent, None, None]:
        """The last checkpoint, and the best when ``improved`` (a stop request waits until they are written)."""
        w = self.writer
        self._save(w.last_path, epoch)
        yield self.event("checkpoint", epoch=epoch, batch=self.n_batches, path=str(w.last_path),
                         message=f"saved {w.last_path.name}")
        if improved:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._save(w.best_path, epoch)
            yield self.event("checkpoint", epoch=epoch, batch=self.n_batches, path=str(w.best_path),
                             message=f"saved {w.best_path.name} (best {self.tracker.monitor} {self.tracker.best:.4f})")

    def _stop_reason(self, epoch: int) -> tuple[str, str] | None:
        """(reason, message) when the run ends after ``epoch``: early stopping or the time budget."""
        cfg, t = self.cfg, self.tracker
        if epoch >= cfg.epochs:
            return None
        if self.early.should_stop(t):
            return "early stopping", (f"Early stopping after epoch {epoch}: no {t.monitor} improvement for "
                                      f"{t.bad_epochs} epochs; best {t.best:.4f} at epoch {t.epoch}.")
        epoch_s = time.perf_counter() - self.t_epoch
        if self.comm.agree([float(not self.budget.room_for(self.elapsed(), epoch_s))], self.device)[0]:
            return "time limit", (f"Stopped after epoch {epoch} of {cfg.epochs}: another epoch would exceed the "
                                  f"time budget of {self.budget.seconds / 60:g} min; best {t.monitor} {t.best:.4f} "
                                  f"at epoch {t.epoch}.")
        return None
