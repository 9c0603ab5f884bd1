"""Pairing a folder of images with a folder of lesion masks, and reading masks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DatasetError

#: File-name endings that mark a mask of the image with the rest of the name ("a_mask.png" -> "a").
MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_masks", "_label", "_labels", "_seg", "_lesion", "_gt")

def read_mask(path: "str | Path") -> np.ndarray:
    """A label image as a (H, W) bool lesion mask: nonzero (in any channel) is the lesion."""
    from ..data import read_image

    arr = read_image(path)
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1) if arr.shape[-1] in (3, 4) else arr.any(axis=-1)
    return np.asarray(arr) != 0

# ----------------------------------------------------------------------------- folders
class PairedFiles(list):
    """A list of ``(image_path, mask_path)`` tuples, with ``unmatched``: the images without a mask."""

    def __init__(self, pairs: Iterable[tuple[Path, Path]] = (), unmatched: Iterable[Path] = (),
                 images_dir: Path | None = None, masks_dir: Path | None = None) -> None:
        super().__init__(pairs)
        self.unmatched: list[Path] = list(unmatched)
        self.images_dir = images_dir
        self.masks_dir = masks_dir


def _strip_mask_suffix(stem: str) -> str:
    low = stem.lower()
    for s in MASK_SUFFIXES:
        if low.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return stem


def _listing(folder: Path) -> list[Path]:
    """Image files under ``folder``, each real file once (links followed without looping; hidden entries ignored)."""
    from ..data import is_image_file, walk_files

    files, _ = walk_files(folder)
    return [p for p, _real in files if is_image_file(p)]


def load_masks_folder(images_dir: "str | Path", masks_dir: "str | Path") -> PairedFiles:
    """Pair every image under ``images_dir`` with its mask under ``masks_dir``.

    A mask matches an image when it has the same relative path without the suffix
    (``images/covid/a.png`` <-> ``masks/covid/a.tif``), else the same file stem anywhere under
    ``masks_dir`` when that stem is unique there.  Mask names may end in ``_mask`` (and similar,
    :data:`MASK_SUFFIXES`): ``a_mask.png`` is the mask of ``a.png``; this also lets images and masks
    share one folder.  This is the layout of
    ``napari_gradcam.phantoms.write_dataset(root, ..., mask_dir=...)``.  Masks are label images:
    nonzero is the lesion (see :func:`read_mask`).

    Returns
    -------
    PairedFiles
        A list of ``(image_path, mask_path)`` in image-path order, with ``.unmatched`` (images
        without a mask).

    Raises
    ------
    DatasetError
        A folder is missing, holds no images, or no image has a mask; one sentence.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    _check_folders(images_dir, masks_dir)
    mask_files = _listing(masks_dir)
    if images_dir.resolve() == masks_dir.resolve():
        mask_files = [p for p in mask_files if _strip_mask_suffix(p.stem) != p.stem]
    by_rel, by_stem = _mask_index(mask_files, masks_dir)
    mask_set = set(mask_files)
    images = [p for p in _listing(images_dir) if p not in mask_set]
    if not images:
        raise DatasetError(f"No images were found in {images_dir}.")
    pairs, unmatched = [], []
    for img in images:
        m = _find_mask(img, images_dir, by_rel, by_stem)
        if m is None or m == img:
            unmatched.append(img)
        else:
            pairs.append((img, m))
    if not pairs:
        raise DatasetError(
            f"None of the {len(images)} images in {images_dir} has a mask in {masks_dir}; a mask needs the "
            "image's relative path or file name (any image suffix, optionally ending in _mask)."
        )
    return PairedFiles(pairs, unmatched, images_dir, masks_dir)


def _check_folders(images_dir: Path, masks_dir: Path) -> None:
    """Raise DatasetError (one sentence) when either folder is missing or is a file."""
    for what, d in (("image", images_dir), ("mask", masks_dir)):
        if not d.exists():
            raise DatasetError(f"No {what} folder at {d}.")
        if not d.is_dir():
            raise DatasetError(f"{d} is a file, not a folder of {what}s.")


def _mask_index(mask_files: list[Path], masks_dir: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The masks by lower-cased relative path without suffix (an exact stem wins over a ``_mask`` one)
    and by lower-cased stem (with and without the mask suffix)."""
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in mask_files:
        rel = p.relative_to(masks_dir)
        for stem in {p.stem, _strip_mask_suffix(p.stem)}:
            key = str(rel.parent / stem).lower()
            # an exact-stem mask wins over a suffixed one
            if key not in by_rel or stem == p.stem:
                by_rel[key] = p
            by_stem.setdefault(stem.lower(), []).append(p)
    return by_rel, by_stem


def _find_mask(img: Path, images_dir: Path, by_rel: dict[str, Path],
               by_stem: dict[str, list[Path]]) -> Path | None:
    """The mask of ``img``: the same relative path, else the only mask with its stem, else None."""
    rel = img.relative_to(images_dir)
    m = by_rel.get(str(rel.parent / img.stem).lower())
    if m is None:
        cands = sorted(set(by_stem.get(img.stem.lower(), [])))
        m = cands[0] if len(cands) == 1 else None
    return m


def _folder_label(images_dir: Path, path: Path, classes: Sequence[str]) -> str | None:
    """The class named by the image's top subfolder (case-insensitive), else None."""
    parts = path.relative_to(images_dir).parts
    if len(parts) < 2:
        return None
    lookup = {c.lower(): c for c in classes}
    return lookup.get(parts[0].lower())
