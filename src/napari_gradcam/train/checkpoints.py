"""Checkpoints: the output folder checked before training, model + optimizer pairs written atomically.

After every epoch ``<out stem>.last.safetensors`` is written, and ``out`` whenever the monitored
validation metric improves.  Both are ordinary model bundles whose ``config.training`` holds the run's
summary; next to each, ``<stem>.optim.pt`` holds the optimizer (and AMP scaler) state as plain tensors
(``torch.load(weights_only=True)``).  A model file and its sidecar carry the same ``checkpoint_id``, so a
sidecar left from another save (a crash between the two writes) is recognised and not used.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import TrainingError
from .faults import brief_exc, write_failure

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def optimizer_state_path(checkpoint: str | Path) -> Path:
    """The sidecar file with optimizer state for a checkpoint: ``<stem>.optim.pt``."""
    p = Path(checkpoint)
    return p.with_name(p.name[: -len(p.suffix)] + ".optim.pt" if p.suffix else p.name + ".optim.pt")


def output_names(out: Path, last: Path) -> list[Path]:
    """The files a run writes: best and last model, and their optimizer sidecars."""
    return [out, optimizer_state_path(out), last, optimizer_state_path(last)]


def existing_folder(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists (the output folder is made at the first save)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def prepare_output(out: Path, last: Path) -> int:
    """Check that ``out``'s folder can be written (create and delete a probe file in it, or in its
    nearest existing ancestor: nothing is created before the data is checked) and remove temporary
    files left there by an interrupted run; returns how many were removed.  Raises TrainingError."""
    folder = out.parent
    if out.is_dir():
        raise TrainingError(f"The output {out} is a folder; give a file name ending in .safetensors.")
    probe_dir = existing_folder(folder)
    if not probe_dir.is_dir():
        raise TrainingError(f"The output folder {folder} cannot be made: {probe_dir} is a file.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainingError(
            f"The output folder {folder} is not writable ({e.strerror or brief_exc(e)}); "
            "make it writable or choose another output file.") from None
    removed = 0
    if probe_dir != folder:
        return removed
    for name in {p.name for p in output_names(out, last)}:
        for stale in folder.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
                    removed += 1
    return removed


def check_free_space(out: Path, last: Path, model, optimizer: str) -> None:
    """Refuse to start when the output folder cannot hold the checkpoints (two model + optimizer pairs
    and one temporary copy, less the files they replace)."""
    model_b = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    param_b = sum(p.numel() * p.element_size() for p in model.parameters())
    opt_b = param_b * (1 if optimizer.lower() == "sgd" else 2)
    existing = sum(p.stat().st_size for p in output_names(out, last) if p.is_file())
    need = 2 * (model_b + opt_b) + max(model_b, opt_b) - existing
    try:
        free = shutil.disk_usage(existing_folder(out.parent)).free
    except OSError:
        return
    if need > free:
        raise TrainingError(
            f"Only {free / 1e6:.1f} MB is free in {out.parent}, but the checkpoints need about "
            f"{need / 1e6:.1f} MB; free some space or choose another output folder.")


def read_optimizer_state(checkpoint: str | Path, summary: dict[str, Any], epochs_done: int) -> tuple[dict | None, str]:
    """The optimizer sidecar of ``checkpoint`` if it belongs to it, and a note for the start message.

    Returns ``(state, note)``: ``state`` is None (with the reason in ``note``) when the sidecar is
    missing, unreadable or from another save (its ``checkpoint_id`` differs from ``summary``'s).
    """
    import torch

    side = optimizer_state_path(checkpoint)
    state, unread = None, False
    if side.is_file():
        try:
            state = torch.load(side, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged sidecar only costs the optimizer state
            unread = True
    stamp = summary.get("checkpoint_id")
    if not isinstance(state, dict):
        why = "its saved state could not be read" if unread or state is not None else "no saved optimizer state"
        return None, f"optimizer restarted ({why})"
    if (state.get("checkpoint_id") != stamp if stamp or state.get("checkpoint_id")
            else int(state.get("epochs_done", -1)) != epochs_done):
        return None, (f"optimizer restarted (the saved state in {side.name} belongs to another checkpoint, "
                      "as after an interrupted save)")
    return state, "optimizer state restored"


class CheckpointWriter:
    """Writes the best and the last checkpoint, each a model file then its optimizer sidecar.

    Both writes are atomic (:func:`napari_gradcam.outputs.atomic_write`) and stamped with one new
    ``checkpoint_id``.  :meth:`kept` says, for an error message, which checkpoint survives a failure.
    """

    def __init__(self, best_path: Path, last_path: Path, resume: str | None = None, resume_epoch: int = 0) -> None:
        self.best_path, self.last_path = Path(best_path), Path(last_path)
        self.resume, self.resume_epoch = resume, resume_epoch
        self.last_epoch: int | None = None  # the epoch held by last_path, once this run has written it
        self.best_written = resume is not None and self.best_path.is_file()

    def kept(self) -> str:
        """What survives a failure, as the end of a sentence."""
        if self.last_epoch is not None:
            return f"the checkpoint of epoch {self.last_epoch} in {self.last_path} is intact; resume from it"
        if self.resume is not None:
            return f"the checkpoint {self.resume} (epoch {self.resume_epoch}) is unchanged; resume from it"
        return "no epoch had finished, so no model was written"

    def save(self, path: Path, bundle: "ModelBundle", summary: Callable[[str], dict[str, Any]],
             optimizer_state: dict[str, Any], epochs_done: int) -> None:
        """Write ``bundle`` (its ``config.training`` set to ``summary(checkpoint_id)``) to ``path``, then
        ``optimizer_state`` to the sidecar; raises TrainingError naming the intact checkpoint."""
        import torch

        from ..bundle import save_model
        from ..outputs import atomic_write

        stamp = uuid.uuid4().hex
        bundle.config.training = summary(stamp)
        try:
            save_model(bundle, path)
        except Exception as e:
            raise write_failure(e, path, epochs_done, self.kept()) from e
        if path == self.last_path:
            self.last_epoch = epochs_done
        side = optimizer_state_path(path)
        state = {**optimizer_state, "epochs_done": epochs_done, "checkpoint_id": stamp}
        try:
            atomic_write(side, lambda tmp: torch.save(state, tmp))
        except Exception as e:
            with contextlib.suppress(OSError):  # the old state belongs to the weights just replaced
                side.unlink(missing_ok=True)
            raise write_failure(e, side, epochs_done, self.kept(), "optimizer state") from e
        if path == self.best_path:
            self.best_written = True
