"""Data in: image files and data sets for training, evaluation and the audit.

The package's parts, each usable on its own:

* :mod:`.images` - reading one image file (any format Pillow or tifffile reads; DICOM through
  :mod:`napari_gradcam.dicom`), lazily for large TIFFs, with its orientation and size checks.
* :mod:`.folders` - finding a data set's images in class folders or a CSV; patient groups from names.
* :mod:`.splits` - the listing (:class:`ImageFolderData`) and its patient-grouped train/validation split.
* :mod:`.dataset` - augmentation and the cached training :class:`ImageDataset` (torch, imported lazily).

The names below are re-exported here, where callers import them from (``napari_gradcam.data.read_image``).
"""

from __future__ import annotations

from ..resources import DECODE_MEMORY_SHARE
from ..shipped import demo_model_path
from .dataset import CACHE_LIMIT_BYTES, FILLS, Augmentation, ImageDataset
from .folders import (
    IGNORED_FOLDERS,
    PATIENT_PATTERN,
    _class_folders,
    _resolve_pattern,
    compile_pattern,
    group_of,
    scan_folder,
    walk_files,
)
from .images import (
    IMAGE_SUFFIXES,
    DeclaredImage,
    _quick_check,
    declared_image,
    image_extent,
    is_image_file,
    open_image_lazy,
    read_image,
    typical_source_size,
)
from .splits import MIN_PER_CLASS, SPLIT_METHOD, ImageFolderData, Item, split_indices, split_indices_v1

__all__ = [
    "CACHE_LIMIT_BYTES", "DECODE_MEMORY_SHARE", "FILLS", "IGNORED_FOLDERS", "IMAGE_SUFFIXES", "MIN_PER_CLASS",
    "PATIENT_PATTERN", "SPLIT_METHOD", "Augmentation", "DeclaredImage", "ImageDataset", "ImageFolderData", "Item",
    "compile_pattern", "declared_image", "demo_model_path", "group_of", "image_extent", "is_image_file",
    "open_image_lazy", "read_image", "scan_folder", "split_indices", "split_indices_v1", "typical_source_size",
    "walk_files",
]
