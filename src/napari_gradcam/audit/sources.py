"""What an audit reads: a folder (class subfolders give labels, a flat folder has none), a CSV of paths
(and optional labels), or a list / stack of arrays, as one list of :class:`Entry` with the files that
cannot take part (and why) listed in ``skipped``.

Image files are read with :func:`napari_gradcam.data.read_image` (the project's one reader) at the
moment the explanation pass needs them; nothing is decoded while listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import IMAGE_SUFFIXES, _class_folders, is_image_file, read_image, walk_files
from ..data.folders import read_csv_rows
from ..errors import DatasetError, ImageError, shown


@dataclass(frozen=True)
class Entry:
    """One image of the audit.

    key : the absolute path of the file, or ``array:<i>`` for in-memory input (``images.csv``'s ``path``)
    label : index into the model's classes, or None where unknown
    rel : the path relative to the source folder (to find its mask), None for arrays
    """

    key: str
    label: int | None
    rel: str | None = None


@dataclass
class AuditSource:
    """The images of an audit; ``read(i)`` gives entry ``i``'s pixels (ImageError when it cannot)."""

    entries: list[Entry]
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    arrays: Sequence | None = None
    masks: Sequence | None = None  # one mask per in-memory image (a Labels layer's data), or None

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, i: int) -> np.ndarray:
        """(H, W) or (H, W, 3|4) array of entry ``i``, any dtype."""
        if self.arrays is not None:
            return np.asarray(self.arrays[i])
        return read_image(self.entries[i].key)


def _label_index(name: str, classes: Sequence[str]) -> int:
    return list(classes).index(name)


def _check_class_names(found: Sequence[str], classes: Sequence[str], where: str) -> None:
    """One sentence when the data's class names are not the model's."""
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DatasetError(f"The class(es) {', '.join(map(repr, unknown))} of {where} are not classes of the model "
                           f"({', '.join(map(repr, classes))}); rename or remove them, or audit a folder without "
                           "labels.")


def _images_under(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """The image files under ``folder`` (see ``data.walk_files``); what the walk passed over and every other
    file are added to ``skipped`` with the reason."""
    files, passed = walk_files(folder)
    skipped += passed
    skipped += [(p, f"not an image file type ({p.suffix or 'no suffix'})") for p, _ in files if not is_image_file(p)]
    return [p for p, _ in files if is_image_file(p)]


def _folder_source(root: Path, classes: Sequence[str]) -> AuditSource:
    skipped: list[tuple[Path, str]] = []
    folders, loose = _class_folders(root, skipped)
    if not folders:  # a flat folder: no labels
        entries = [Entry(os.path.abspath(p), None, os.path.relpath(p, root)) for p in _images_under(root, skipped)]
        return AuditSource(entries, str(root), [(str(p), r) for p, r in skipped])
    _check_class_names([d.name for d in folders.values()], classes, f"the folder {shown(root)}")
    skipped += [(p, "not in a class subfolder") for p in loose]
    entries = []
    for d in folders.values():
        images = _images_under(d, skipped)
        if not images:
            skipped.append((d, f"class {d.name!r} has no images"))
        label = _label_index(d.name, classes)
        entries += [Entry(os.path.abspath(p), label, os.path.relpath(p, root)) for p in images]
    return AuditSource(entries, str(root), [(str(p), r) for p, r in skipped])


def _csv_rows(path: Path) -> tuple[list[list[str]], int, int | None]:
    """(rows, path column, label column or None) of a CSV of ``path[,label]`` (header optional)."""
    rows = read_csv_rows(path, "path[,label]", shown(path.name))
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        return rows[1:], header.index("path"), header.index("label") if "label" in header else None
    return rows, 0, 1 if len(rows[0]) > 1 else None


def _csv_source(path: Path, classes: Sequence[str]) -> AuditSource:
    rows, ip, il = _csv_rows(path)
    base = path.parent
    labels = sorted({r[il].strip() for r in rows if il is not None and len(r) > il and r[il].strip()})
    _check_class_names(labels, classes, f"the CSV {shown(path.name)}")
    entries, skipped, seen = [], [], set()
    for r in rows:
        p = Path(r[ip].strip())
        p = p if p.is_absolute() else base / p
        key = os.path.abspath(p)
        if key in seen:
            continue
        seen.add(key)
        if not is_image_file(p):
            skipped.append((key, f"not an image file type ({p.suffix or 'no suffix'})"))
            continue
        name = r[il].strip() if il is not None and len(r) > il else ""
        entries.append(Entry(key, _label_index(name, classes) if name else None, os.path.relpath(key, base)))
    return AuditSource(entries, str(path), skipped)


def _array_source(arrays, labels, classes: Sequence[str]) -> AuditSource:
    n = len(arrays)
    if labels is not None and len(labels) != n:
        raise DatasetError(f"{len(labels)} labels were given for {n} images.")
    idx = []
    for lab in labels if labels is not None else [None] * n:
        if lab is None or (isinstance(lab, str) and not lab):
            idx.append(None)
        elif isinstance(lab, (int, np.integer)):
            if not 0 <= int(lab) < len(classes):
                raise DatasetError(f"Label {int(lab)} is not a class index of the model (0..{len(classes) - 1}).")
            idx.append(int(lab))
        else:
            _check_class_names([str(lab)], classes, "the labels given")
            idx.append(_label_index(str(lab), classes))
    return AuditSource([Entry(f"array:{i}", idx[i]) for i in range(n)], f"{n} arrays", [], arrays)


def open_source(source, classes: Sequence[str], labels=None) -> AuditSource:
    """The images of ``source``.

    Parameters
    ----------
    source : folder (class subfolders named like the model's classes give labels; a folder of images has
        none), a ``.csv`` file of ``path[,label]`` rows (paths relative to the CSV's folder), a list (any
        sequence) of (H, W[, C]) arrays, or an (N, H, W[, C]) stack (numpy, or lazy: dask, zarr), read one
        image at a time.
    classes : the model's class names (labels must be among them).
    labels : for arrays only: one class name or index (or None) per image.

    Raises
    ------
    DatasetError
        The source does not exist, names classes the model does not have, or holds no image; one sentence.
    """
    if isinstance(source, (str, os.PathLike)):
        if labels is not None:
            raise DatasetError("Labels of files come from their class folders or the CSV's label column, "
                               "not from labels=.")
        path = Path(source)
        if path.is_file() and path.suffix.lower() == ".csv":
            src = _csv_source(path, classes)
        elif path.is_dir():
            src = _folder_source(path, classes)
        elif path.is_file():
            raise DatasetError(f"{shown(path)} is a file; give a folder of images or a CSV of paths.")
        else:
            raise DatasetError(f"No folder or CSV at {shown(path)}.")
    elif isinstance(source, np.ndarray) and source.ndim in (3, 4) or isinstance(source, Sequence) or \
            hasattr(source, "__getitem__") and hasattr(source, "__len__") and hasattr(source, "shape"):
        src = _array_source(source, labels, classes)
    else:
        raise DatasetError(f"Cannot audit a {type(source).__name__}; give a folder, a CSV or a list of arrays.")
    if not src.entries:
        raise DatasetError(f"No images were found in {shown(src.description)}.")
    return src


def find_mask(masks: Path, rel: str | None) -> Path | None:
    """The mask of an image: the file of the same relative name under ``masks``, or with the same stem and
    another image suffix; None where there is none."""
    if rel is None:
        return None
    same = masks / rel
    if same.is_file():
        return same
    stem = same.with_suffix("")
    for suffix in sorted(IMAGE_SUFFIXES):
        other = stem.with_suffix(suffix)
        if other.is_file():
            return other
    return None


def read_mask(masks, rel: str | None, shape: tuple[int, int], index: int | None = None) -> np.ndarray:
    """(H, W) bool mask of an image (``masks`` a folder, or an (N, H, W) stack indexed by ``index``).

    Raises ImageError (one sentence) when it is missing, unreadable or of another size than the image.
    """
    if not isinstance(masks, (str, os.PathLike)):
        m = np.asarray(masks[index])
    else:
        path = find_mask(Path(masks), rel)
        if path is None:
            raise ImageError(f"no mask {shown(rel)} in {shown(masks)}")
        m = read_image(path)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape[:2] != tuple(shape):
        raise ImageError(f"the mask is {m.shape[0]}x{m.shape[1]} px, the image {shape[0]}x{shape[1]} px")
    return m > 0
