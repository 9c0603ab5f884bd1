"""User-facing errors: each carries one sentence that the CLI and napari show as is."""

from __future__ import annotations


class GradCamError(Exception):
    """Base class for errors a user can cause (bad file, bad image, bad data folder).

    The message is one clear sentence; the CLI prints it and exits with code 2,
    the napari widgets show it as a notification.
    """


class ModelFileError(GradCamError):
    """A model file that cannot be loaded safely or does not fit its architecture."""


class ImageError(GradCamError):
    """An image that cannot be classified or explained (shape, dtype, values)."""


class LayerError(GradCamError):
    """A layer name that does not exist in the model, or a method undefined for it."""


class DatasetError(GradCamError):
    """A data folder that cannot be trained or evaluated on."""


class TrainingError(GradCamError):
    """A training run that failed part-way (a batch, validation, a checkpoint write, the output folder)."""
