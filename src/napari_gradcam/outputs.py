"""Writing output files atomically: a unique temporary file beside the target, fsync, rename.

A crash, a full disk or an exception mid-write leaves any previous file at the path intact and no
temporary file behind.  Every file the package writes (models, checkpoints, heatmaps, reports,
overlays) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it to ``path`` in one step.

    Parameters
    ----------
    path : the final file; its folder is created if needed.
    write : writes the whole file at the temporary path it is given (a str).
    mode : permission bits of the result (``mkstemp`` would leave 0600).

    Returns
    -------
    Path of the written file.  On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, mode)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
