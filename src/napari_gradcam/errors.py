"""User-facing errors: each carries one sentence that the CLI and napari show as is.

Every message of the family is one printable line: control characters that reach a message (a file
name with a newline or an escape sequence in it) are escaped on construction, by :func:`shown`.
"""

from __future__ import annotations


def shown(text: object) -> str:
    """``str(text)`` with every non-printable character escaped (``"a\\nb.png"`` -> ``a\\\\nb.png``).

    Printable text, non-ASCII letters included, is returned as it is, so a message that names a
    file always stays on one line and cannot move the terminal's cursor.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class GradCamError(Exception):
    """Base class for errors a user can cause (bad file, bad image, bad data folder, bad argument).

    The message is one clear sentence; the CLI prints it and exits with code 2,
    the napari widgets show it as a notification.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(shown(message), *args)


class ModelFileError(GradCamError):
    """A model file that cannot be loaded safely or does not fit its architecture."""


class ImageError(GradCamError):
    """An image that cannot be classified or explained (shape, dtype, values, declared size)."""


class LayerError(GradCamError):
    """A layer name that does not exist in the model, or a method undefined for it."""


class DatasetError(GradCamError):
    """A data folder that cannot be trained or evaluated on."""


class TrainingError(GradCamError):
    """A training run that failed part-way (a batch, validation, a checkpoint write, the output folder)."""


class ParameterError(GradCamError, ValueError):
    """An argument of the wrong type or out of range: a bool or 1.5 as a class index, ``batch_size=1.5``,
    a NaN where a number is needed, a device that cannot run the model.  Also a ``ValueError``."""


class OutputError(GradCamError, OSError):
    """An output file or folder that cannot be written (checked before the work starts, or a write that
    failed: the previous file at that path is left as it was).  Also an ``OSError``, whose ``errno``
    and ``filename`` are set when a write failed."""

    def __str__(self) -> str:  # the sentence, not OSError's "[Errno N] ..." format
        return str(self.args[0]) if self.args else ""


class NumericalError(GradCamError):
    """A model whose weights, running statistics or outputs are NaN or infinite: no answer is given."""


class ResourceError(GradCamError):
    """Work refused before it starts because it would not fit: an image whose declared size is too large
    to decode, tiles whose buffers exceed the memory available."""


class TimeBudgetError(ResourceError):
    """Work refused before it starts because it would take longer than its time budget (a tiling plan of
    hours, estimated from a measured tile).  ``seconds`` is the estimate, ``budget_seconds`` the budget,
    ``tiles`` the planned tile count; ``summary`` is the estimate in words, without the remedy (so that the
    command line can name ``--force`` and napari a confirmation).  Pass ``force=True`` to run it anyway."""

    def __init__(self, message: object = "", *args: object, seconds: float = float("nan"),
                 budget_seconds: float = float("nan"), tiles: int = 0, summary: str = "") -> None:
        super().__init__(message, *args)
        self.seconds, self.budget_seconds, self.tiles = float(seconds), float(budget_seconds), int(tiles)
        self.summary = shown(summary or message)


class GradCamWarning(UserWarning):
    """Something worth knowing that does not stop the work (e.g. far more tiles than the image needs)."""
