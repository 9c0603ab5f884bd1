"""A data set's listing (:class:`ImageFolderData` of :class:`Item`) and its patient-grouped splits.

:func:`split_indices` / :meth:`ImageFolderData.split` make a deterministic train/validation split that is
stratified by class and grouped by patient, so that no patient is on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError

#: Fewest images (and groups) per class that a train/validation split accepts.
MIN_PER_CLASS = 2
#: How :func:`split_indices` splits, as stored in training checkpoints (``split_method``); a checkpoint
#: without it was split by :func:`split_indices_v1` and resumes with that split.
SPLIT_METHOD = "group-shuffle-per-class"
#: Decoded images are cached in memory up to this many bytes (uint8, at the network's input size).


@dataclass(frozen=True)
class Item:
    """One image of a data set: its file, class index and patient/group id."""

    path: Path
    label: int
    group: str


@dataclass
class ImageFolderData:
    """The images of a data folder (or CSV) with their classes and groups.

    Attributes
    ----------
    root : Path
        The data folder (or the CSV's folder).
    classes : list[str]
        Class names; ``Item.label`` indexes this list.
    items : list[Item]
        The readable images, sorted by class then path (a stable order for reproducible splits).
    skipped : list[tuple[Path, str]]
        Files that were not used, with the reason (unreadable, unknown suffix, unknown class, broken
        or looping link, a second path to an image already listed).
    unreadable_classes : dict[str, list[tuple[Path, str]]]
        Classes that have image files but not one readable image: their files and the reasons.
    notes : list[str]
        What a user should know about the listing (a CSV naming files many times, or files outside
        the data folder); also issued as :class:`~napari_gradcam.errors.GradCamWarning`.
    """

    root: Path
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    unreadable_classes: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.items]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices."""
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return [it.group for it in self.items]

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes)) if self.items else [0] * len(self.classes)
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, indices: Sequence[int]) -> "ImageFolderData":
        """The items at ``indices`` (same classes, no skipped list or notes)."""
        return replace(self, items=[self.items[int(i)] for i in indices], skipped=[], unreadable_classes={}, notes=[])

    def split(self, val_fraction: float = 0.2, seed: int = 0,
              method: str = SPLIT_METHOD) -> tuple["ImageFolderData", "ImageFolderData"]:
        """(train, validation): stratified by class, grouped by patient; see :func:`split_indices`
        (``method="v1"``: :func:`split_indices_v1`, the split of older checkpoints)."""
        splitter = split_indices_v1 if method == "v1" else split_indices
        tr, va = splitter(self.labels, self.groups, val_fraction, seed, self.classes)
        return self.subset(tr), self.subset(va)

    def check_trainable(self, min_per_class: int = MIN_PER_CLASS) -> None:
        """Raise one-sentence DatasetError unless there are >= 2 classes with >= ``min_per_class`` images each
        and every class folder with image files has a readable one."""
        where = f" in {self.root}" if self.root else ""
        bad = [f for files in self.unreadable_classes.values() for f in files]
        if not self.items:
            if bad:
                raise DatasetError(
                    f"None of the {len(bad)} image file(s){where} could be read (e.g. {bad[0][0].name}: {bad[0][1]})."
                )
            raise DatasetError(f"No readable images were found{where}; expected one subfolder of images per class.")
        for c, files in self.unreadable_classes.items():
            raise DatasetError(
                f"None of the {len(files)} image file(s) of class {c!r} could be read "
                f"(e.g. {files[0][0].name}: {files[0][1]}); replace or remove them."
            )
        counts = self.class_counts()
        present = [c for c, n in counts.items() if n > 0]
        if len(present) < 2:
            raise DatasetError(
                f"Only one class ({present[0]!r}) was found{where}; a classifier needs at least two class subfolders."
            )
        few = {c: n for c, n in counts.items() if n < min_per_class}
        if few:
            c, n = next(iter(few.items()))
            raise DatasetError(
                f"Class {c!r} has only {n} image(s); at least {min_per_class} per class are needed "
                "to train and validate."
            )



def _split_inputs(labels, groups, val_fraction, classes):
    """Checked arrays for the splitters: labels (N,) int64, group index (N,), group sizes, each group's
    majority class, and class names."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"The validation fraction must be between 0 and 1, not {val_fraction}.")
    groups = [str(i) for i in range(n)] if groups is None else [str(g) for g in groups]
    if len(groups) != n:
        raise DatasetError("There must be one group per label.")
    names = list(classes) if classes is not None else [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    uniq, ginv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    gsize = np.bincount(ginv, minlength=len(uniq))
    counts = np.zeros((len(uniq), max(len(names), int(labels.max()) + 1 if n else 1)), dtype=np.int64)
    np.add.at(counts, (ginv, labels), 1)
    return labels, ginv, gsize, counts.argmax(1), names


def _need_two_groups(name: str, n_groups: int) -> None:
    if n_groups < 2:
        raise DatasetError(
            f"Class {name!r} has images from only one patient/group; at least two are needed "
            "to hold some out for validation."
        )


def split_indices(
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified, grouped train/validation split (scikit-learn's ``GroupShuffleSplit`` per class).

    Each group (patient) goes wholly to one side.  Groups are assigned to their majority class; within
    each class ``GroupShuffleSplit(test_size=val_fraction, random_state=seed)`` holds out that share of
    the class's groups (rounded up: at least one group; at least one group stays for training).

    Returns
    -------
    (train_idx, val_idx) : np.ndarray, np.ndarray
        Sorted int64 indices into ``labels``.
    """
    from sklearn.model_selection import GroupShuffleSplit

    labels, ginv, gsize, gclass, names = _split_inputs(labels, groups, val_fraction, classes)
    val_groups: list[np.ndarray] = []
    for c in range(int(gclass.max()) + 1 if len(gclass) else 0):
        gs = np.flatnonzero(gclass == c)
        if len(gs) == 0:
            continue
        _need_two_groups(names[c] if c < len(names) else str(c), len(gs))
        n_val = min(len(gs) - 1, max(1, math.ceil(float(val_fraction) * len(gs))))
        splitter = GroupShuffleSplit(n_splits=1, test_size=n_val, train_size=len(gs) - n_val,
                                     random_state=np.random.default_rng([seed, c]).integers(2**31))
        _, held = next(splitter.split(gs, groups=gs))
        val_groups.append(gs[held])
    is_val = np.isin(ginv, np.concatenate(val_groups) if val_groups else np.zeros(0, np.int64))
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def split_indices_v1(
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The split of checkpoints written before ``split_method`` was stored (kept so that they resume with
    their own validation images).  Within each class the groups are shuffled and taken for validation
    until they hold about ``val_fraction`` of that class's images."""
    labels, ginv, gsize, gclass, names = _split_inputs(labels, groups, val_fraction, classes)
    rng = np.random.default_rng(seed)
    val_groups: list[int] = []
    for c in range(len(names) if len(gclass) == 0 else max(len(names), int(gclass.max()) + 1)):
        gs = np.flatnonzero(gclass == c)
        n_c = int(gsize[gs].sum())
        if n_c == 0:
            continue
        _need_two_groups(names[c] if c < len(names) else str(c), len(gs))
        gs = gs[rng.permutation(len(gs))]
        target, taken = float(val_fraction) * n_c, 0
        for k, g in enumerate(gs):
            if k >= len(gs) - 1 or (taken > 0 and taken + gsize[g] / 2 > target):
                break
            val_groups.append(int(g))
            taken += int(gsize[g])
    is_val = np.isin(ginv, np.asarray(val_groups, dtype=np.int64))
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)
