"""One-sentence messages for what can go wrong part-way through a run (a batch, validation, a write)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from ..errors import GradCamError, TrainingError


def brief_exc(e: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one short line."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says that host or device memory ran out."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(e, (MemoryError, oom)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        w in text for w in ("out of memory", "can't allocate memory", "not enough memory"))


def write_errno(e: BaseException) -> int | None:
    """The OS error number behind a failed write (OSError, or 'os error N' in a library's message)."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = re.search(r"os error (\d+)", str(e))
    return int(m.group(1)) if m else None


def run_failure(e: Exception, where: str, kept: str, batch_size: int, input_size: int) -> GradCamError:
    """The error for an exception raised ``where`` (e.g. "in epoch 2 at batch 3 of 5"); ``kept`` ends
    the sentence with what survives (see :meth:`CheckpointWriter.kept`)."""
    if isinstance(e, GradCamError):
        return type(e)(f"{str(e).rstrip('.')}; {kept}.")
    if is_out_of_memory(e):
        return TrainingError(
            f"Training ran out of memory {where} ({brief_exc(e, 100)}); use a smaller batch size (now "
            f"{batch_size}) or image size (now {input_size}); {kept}.")
    return TrainingError(f"Training failed {where} ({brief_exc(e)}); {kept}.")


def write_failure(e: Exception, path: Path, epochs_done: int, kept: str, what: str = "checkpoint") -> TrainingError:
    """The error for a checkpoint write that failed: why (from the OS error) and what to do."""
    code = write_errno(e)
    if code is None:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(path.parent).free < 1 << 20:
                code = errno.ENOSPC
    why = os.strerror(code) if code else brief_exc(e)
    advice = {errno.ENOSPC: "free some space", getattr(errno, "EDQUOT", errno.ENOSPC): "free some space",
              errno.EACCES: f"make {path.parent} writable", errno.EPERM: f"make {path.parent} writable",
              errno.EROFS: f"make {path.parent} writable"}.get(code)
    if advice:
        kept += f" after you {advice}" if kept.endswith("resume from it") else f"; {advice}"
    return TrainingError(f"Could not write the {what} of epoch {epochs_done} to {path} ({why}); {kept}.")
