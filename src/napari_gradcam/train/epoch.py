"""One training epoch: the batches (sharded across processes), and the optimisation steps over them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

import numpy as np

from ..errors import GradCamError, TrainingError
from .distributed import Comm

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data import ImageDataset
    from .setup import Optimisation


def epoch_batches(n: int, batch_size: int, labels: np.ndarray, weighting: str, seed: int, epoch: int,
                  limit: int | None, comm: Comm = Comm()) -> list[np.ndarray]:
    """Index batches of this process for one epoch (deterministic in seed and epoch).

    One process: a permutation of the images (or, with ``weighting == "sampler"``, a class-balanced draw
    with replacement).  Several: torch's ``DistributedSampler`` gives each process an equal share of
    one permutation (the balanced draw is shared out the same way), so all take the same number of steps.
    A tiny last batch (under a quarter of ``batch_size``) is dropped; ``limit`` caps the count.
    """
    rng = np.random.default_rng([seed, epoch])
    if weighting == "sampler":
        counts = np.bincount(labels)
        w = 1.0 / counts[labels]
        order = rng.choice(n, size=n, replace=True, p=w / w.sum())
        if comm.distributed:
            order = np.resize(order, math.ceil(n / comm.world) * comm.world)[comm.rank :: comm.world]
    elif comm.distributed:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(n), num_replicas=comm.world, rank=comm.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
    else:
        order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, batch_size // 4):
        batches = batches[:-1]  # a tiny last batch only adds noise (and breaks BatchNorm at size 1)
    return batches[:limit] if limit else batches


def batch_source(ds: "ImageDataset", batches: list[np.ndarray], num_workers: int, pin: bool) -> Iterator:
    """(x, y) training batches: uint8 straight from the in-memory cache, else unit-range floats from a DataLoader."""
    import torch

    labels = ds.labels
    if ds.fully_cached:
        return ((ds.cached_batch(ix), torch.as_tensor(labels[ix])) for ix in batches)
    from torch.utils.data import DataLoader

    return iter(DataLoader(ds, batch_sampler=batches, num_workers=num_workers, pin_memory=pin))


@dataclass
class StepParts:
    """What an optimisation step needs: the model to train (DDP-wrapped with several processes), the
    optimiser, augmentation and normalisation on the device, and the loss."""

    model: Any
    optimisation: "Optimisation"
    device: "torch.device"
    mean: "torch.Tensor"  # (1, C, 1, 1)
    inv_std: "torch.Tensor"
    augmentation: Callable | None = None
    aug_generator: "torch.Generator | None" = None
    channels_last: bool = False
    class_weight: "torch.Tensor | None" = None
    label_smoothing: float = 0.0

    def inputs(self, x: "torch.Tensor", y: "torch.Tensor | None" = None) -> "torch.Tensor":
        """A batch as the network's input: unit range, augmented, normalised, in the memory layout.
        ``y``: the labels, for an augmentation that uses them (``per_label``: unlearning's artifact paste)."""
        import torch

        x = x.to(self.device, non_blocking=True)
        x = x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x.float()
        if self.augmentation is not None:
            labels = {"labels": y} if getattr(self.augmentation, "per_label", False) else {}
            x = self.augmentation(x, generator=self.aug_generator, **labels)
        x = (x - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss(self, x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        with self.optimisation.autocast():
            logits = self.model(self.inputs(x, y))
        return F.cross_entropy(logits.float(), y.to(self.device, non_blocking=True), weight=self.class_weight,
                               label_smoothing=self.label_smoothing)

    def step(self, loss: "torch.Tensor", lr: float) -> None:
        opt, scaler = self.optimisation.optimizer, self.optimisation.scaler
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


@dataclass
class EpochStats:
    """How an epoch went: mean loss (over every process), images, optimisation seconds, throughput, last
    learning rate, the global step after it, and the batch before which it stopped (None: it finished)."""

    loss: float | None
    seen: int
    train_seconds: float
    images_per_s: float | None
    lr: float
    global_step: int
    stopped_before: int | None = None


def run_epoch(parts: StepParts, source: Iterator, n_batches: int, epoch: int, global_step: int, base_lr: float,
              learning_rate: Callable[[int, float | None], float], clock: Callable[[], float | None],
              stop_requested: Callable[[], bool], fail: Callable[[Exception, int], GradCamError],
              comm: Comm = Comm(), log_every: int = 1) -> Generator[tuple[int, float | None, float | None, float], None, EpochStats]:
    """Train over ``n_batches`` batches of ``source``; yields (batches done, mean loss so far, images/s, lr).

    Before each optimisation step the processes agree (:meth:`Comm.agree`) on a stop request, a failure
    and the clock (``clock()``: the used share of a time budget, or None), so that all take the same
    steps with the same learning rate (``learning_rate(step, clock share)``) and all stop at the same
    batch.  A stop returns early with ``stopped_before`` set; a failure raises ``fail(exception, batch)``
    on every process (another process's failure as a TrainingError with its message).
    """
    import torch

    device = parts.device
    loss_sum, seen, train_time, loss_val, ips, lr = torch.zeros((), device=device), 0, 0.0, None, None, 0.0
    for b in range(n_batches):
        t0 = time.perf_counter()
        stop, err, loss = stop_requested(), None, None
        if not stop:
            try:
                x, y = next(source)
                loss = parts.loss(x, y)
                loss_sum += loss.detach() * len(y)
                seen += len(y)
                if (b + 1) % log_every == 0 or b + 1 == n_batches:
                    loss_val = float(loss_sum.item() / seen)  # syncs the device: only every log_every batches
                    if not math.isfinite(loss_val):
                        raise GradCamError(f"The training loss became {loss_val} in epoch {epoch}; "
                                           f"lower the learning rate (now {base_lr})")
            except Exception as e:  # noqa: BLE001 - every failure ends the run in one sentence, on every process
                err = fail(e, b)
                err.__cause__ = e
        share = clock()
        any_stop, any_err, share = comm.agree([float(stop), float(err is not None), -1.0 if share is None else share],
                                              device)
        if any_err:
            _raise_first(err, comm, device)
        if any_stop:
            return EpochStats(loss_val, seen, train_time, ips, lr, global_step, stopped_before=b)
        lr = learning_rate(global_step, None if share < 0 else share)
        try:
            parts.step(loss, lr)
        except Exception as e:  # noqa: BLE001
            raise fail(e, b) from e
        global_step += 1
        train_time += time.perf_counter() - t0
        ips = seen / train_time if train_time > 0 and loss_val is not None else ips
        yield b + 1, loss_val, ips, lr
    total_loss, total_seen = comm.sum([float(loss_sum.item()), float(seen)], device)
    slowest = comm.agree([train_time], device)[0]
    mean = total_loss / total_seen if total_seen else loss_val
    return EpochStats(mean, int(total_seen), slowest, total_seen / slowest if slowest > 0 else None, lr, global_step)


def _raise_first(err: GradCamError | None, comm: Comm, device) -> None:
    """Raise this process's error, or the first failing process's message as a TrainingError."""
    first = comm.first_error(err, device)
    if err is not None:
        raise err
    rank, text = first
    raise TrainingError(f"Process {rank} of {comm.world}: {text}")


def recalibrate_batchnorm(parts: StepParts, source: Iterator, n_batches: int) -> int:
    """Re-estimate every BatchNorm layer's running statistics with the current weights ("precise BN").

    During an epoch the running averages trail the changing weights, which shifts validation logits
    in early epochs (most on small data sets).  Here they become the plain average over ``n_batches``
    training batches (augmented as in training), forward only.  Returns the batches used (0: no BatchNorm).
    """
    import torch

    model = parts.model.module if hasattr(parts.model, "module") else parts.model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or n_batches <= 0:
        return 0
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    used, was = 0, model.training
    model.train()
    try:
        with torch.no_grad(), parts.optimisation.autocast():
            for x, y in source:
                model(parts.inputs(x, y))
                used += 1
                if used >= n_batches:
                    break
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was)
    return used
