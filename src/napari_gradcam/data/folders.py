"""Finding a data set's images: class folders or a CSV, symbolic links, patient groups from file names.

A data set is a folder of class subfolders::

    DATA_DIR/NORMAL/IM-0115-0001.jpeg
    DATA_DIR/PNEUMONIA/person1_bacteria_1.jpeg
    ...

(any image format Pillow or tifffile reads, any size, grayscale or RGB; nested folders and symbolic
links inside a class folder are fine; hidden files and ``__MACOSX`` folders are ignored), or a CSV of
``path,label[,group]`` rows (paths relative to the CSV's folder).

:func:`scan_folder` lists the images (cheaply checking that each one can be opened) and returns an
:class:`~napari_gradcam.data.splits.ImageFolderData`; files that cannot be read are *skipped and listed*,
never fatal.  The group of a file comes from a regular expression on its file name (``PATIENT_PATTERN``
recognises the Kermany pneumonia set's ``person123_...`` and ``IM-0115-...`` names); files that do not
match are their own group.
"""

from __future__ import annotations

import csv as _csv
import errno
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import DatasetError, GradCamWarning
from .images import IMAGE_SUFFIXES, _quick_check, is_image_file
from .splits import ImageFolderData, Item

#: Folders that never hold images of their own (macOS archives' resource forks); ignored like hidden ``.*`` entries.
IGNORED_FOLDERS = frozenset({"__MACOSX"})
#: Patient id in the Kermany chest X-ray file names: ``person1234_bacteria_...`` (pneumonia),
#: ``IM-0115-0001`` and ``NORMAL2-IM-0383-0001`` (normal: the first number is the patient).
PATIENT_PATTERN = r"(person\d+|(?:NORMAL2-)?IM-\d+)"


def group_of(path: Path, pattern: "str | re.Pattern | None") -> str:
    """Patient/group id of a file: the regex's first capture group (or whole match) on the file name, else the
    stem (the whole name when the suffix is no image type's, e.g. DICOM files named by UID: ``1.2.840.5.17``)."""
    own = path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name
    if pattern is None:
        return own
    rx = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    m = rx.search(path.name)
    if m is None:
        return own
    return m.group(1) if rx.groups else m.group(0)


def _resolve_pattern(group_pattern: "str | None") -> "re.Pattern | None":
    if group_pattern is None or str(group_pattern).lower() in ("", "none", "file"):
        return None
    if str(group_pattern).lower() == "auto":
        group_pattern = PATIENT_PATTERN
    return compile_pattern(group_pattern)


#: A group with a quantifier inside, itself quantified: ``(a+)+``, ``(a|aa)*``, ``(x*y?){2,}``: the shapes
#: that make a backtracking matcher take exponential time (refused when RE2 is not installed).
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*?}]|\|)(?:[^()\\]|\\.)*\)[+*{]")


def compile_pattern(pattern: str, what: str = "The grouping pattern"):
    """A user's regular expression compiled so that matching it cannot hang: with RE2 (``google-re2``,
    linear time in the text, so ``(a+)+$`` on a long name takes microseconds), else with Python's ``re``
    after refusing nested quantifiers.  The result has ``search`` (its match's ``group``) and ``groups``.

    Raises
    ------
    DatasetError
        Not a valid expression, or one the linear-time matcher cannot run (backreferences,
        look-arounds); one sentence naming ``what``.
    """
    pattern = str(pattern)
    try:
        import re2
    except ImportError:  # pragma: no cover - google-re2 is a dependency; a time-safe subset of re otherwise
        re2 = None
    if re2 is not None:
        options = re2.Options()
        options.log_errors = False  # the sentence below says it; RE2 would also log to stderr
        try:
            return re2.compile(pattern, options)
        except re2.error as e:
            why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise DatasetError(f"{what} {pattern!r} is not a regular expression the linear-time matcher (RE2) "
                               f"accepts ({why}; backreferences and look-arounds are not supported).") from None
    if _NESTED_QUANTIFIER.search(pattern):
        raise DatasetError(f"{what} {pattern!r} repeats a group that itself repeats (like (a+)+), which can take "
                           "hours to match; write it without the nesting.")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"{what} {pattern!r} is not a valid regular expression ({e}).") from None


def _link_problem(err: OSError) -> str:
    """Why a symbolic link cannot be followed, from the error of ``os.stat``."""
    if err.errno == errno.ELOOP:
        return "a symbolic link loop"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "a broken link (its target does not exist)"
    return f"a link that cannot be followed ({err.strerror or type(err).__name__})"


def _encloses(outer: str, inner: str) -> bool:
    """Whether real path ``outer`` is ``inner`` or one of its parent folders."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


_SPECIAL = "not a regular file (a pipe, socket or device)"


class _FolderWalk:
    """One :func:`walk_files` run: the files found (real path -> the path listed), what was passed over and
    why, the folders seen, and the links met on the way (followed after the plain folders)."""

    def __init__(self) -> None:
        self.found: dict[str, Path] = {}
        self.passed: list[tuple[Path, str]] = []
        self.seen_dirs: dict[str, Path] = {}
        #: (link, the real paths of the folders it was reached through)
        self.dir_links: list[tuple[Path, tuple[str, ...]]] = []
        self.file_links: list[Path] = []

    def walk(self, top: Path, chain: tuple[str, ...]) -> None:
        """Every folder under ``top`` (real path ``chain[-1]``), depth first in name order; links are noted."""
        stack = [(top, chain)]
        while stack:
            d, chain = stack.pop()
            entries = self._entries(d, chain[-1])
            subdirs = [sub for e in entries if (sub := self._entry(d, e, chain)) is not None]
            stack.extend(reversed(subdirs))

    def _entries(self, d: Path, real: str) -> list:
        """The folder's entries sorted by name; none for a folder seen before or one that cannot be read."""
        if real in self.seen_dirs:
            self.passed.append((d, f"the same folder as {self.seen_dirs[real]}, listed once"))
            return []
        self.seen_dirs[real] = d
        try:
            with os.scandir(d) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.passed.append((d, f"the folder could not be read ({e.strerror or type(e).__name__})"))
            return []

    def _entry(self, d: Path, e, chain: tuple[str, ...]):
        """Sort one folder entry; returns ``(path, chain)`` of a subfolder to walk, else None."""
        if e.name.startswith("."):
            return None
        p = d / e.name
        if e.is_symlink():
            self._link(p, e.name, chain)
        elif e.is_dir(follow_symlinks=False):
            if e.name not in IGNORED_FOLDERS:
                return p, (*chain, os.path.join(chain[-1], e.name))
        elif e.is_file(follow_symlinks=False):
            self.found[os.path.join(chain[-1], e.name)] = p
        else:
            self.passed.append((p, _SPECIAL))
        return None

    def _link(self, p: Path, name: str, chain: tuple[str, ...]) -> None:
        try:
            mode = os.stat(p).st_mode
        except OSError as err:
            self.passed.append((p, _link_problem(err)))
            return
        if stat.S_ISDIR(mode):
            if name not in IGNORED_FOLDERS:
                self.dir_links.append((p, chain))
        elif stat.S_ISREG(mode):
            self.file_links.append(p)
        else:
            self.passed.append((p, _SPECIAL))

    def follow_links(self) -> None:
        """Walk the linked folders (each real folder once, never an enclosing one), then list the linked files
        (each real file once: a path without links wins)."""
        for link, chain in self.dir_links:  # grows while linked folders are walked
            target = os.path.realpath(link)
            if any(_encloses(target, c) for c in chain):
                self.passed.append((link, "a link to an enclosing folder (a loop), not followed"))
            else:
                self.walk(link, (*chain, target))
        for link in self.file_links:
            real = os.path.realpath(link)
            if real in self.found:
                self.passed.append((link, f"the same file as {self.found[real]}, listed once"))
            else:
                self.found[real] = link


def walk_files(folder: str | Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Every regular file under ``folder`` once, following symbolic links without looping.

    Returns ``(files, passed_over)``.  ``files`` are ``(path, real path)`` pairs sorted by path, one per
    real file (a path without links wins over a link to the same file).  ``passed_over`` lists, with
    the reason, broken and looping links, links to an enclosing folder, folders that cannot be read,
    second paths to a file or folder already listed, and special files (pipes, devices).  Hidden
    entries (``.*``) and ``__MACOSX`` folders are ignored.
    """
    folder = Path(folder)
    walk = _FolderWalk()
    walk.walk(folder, (os.path.realpath(folder),))
    walk.follow_links()
    files = sorted(((p, r) for r, p in walk.found.items()), key=lambda pr: str(pr[0]))
    return files, walk.passed


def _class_folders(root: Path, skipped: list[tuple[Path, str]]) -> tuple[dict[str, Path], list[Path]]:
    """(real path -> class folder, loose image files) of a data folder.

    Links that loop back to the data folder or repeat a class folder are added to ``skipped``.
    """
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: (e.is_symlink(), e.name))  # folders before links to them
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise DatasetError(f"The data folder {root} could not be read ({why}).") from None
    root_real = os.path.realpath(root)
    folders: dict[str, Path] = {}
    loose: list[Path] = []
    for e in entries:
        if e.name.startswith(".") or e.name in IGNORED_FOLDERS:
            continue
        p = root / e.name
        try:
            mode = os.stat(p).st_mode
        except OSError as err:
            skipped.append((p, _link_problem(err)))
            continue
        if stat.S_ISDIR(mode):
            real = os.path.realpath(p)
            if _encloses(real, root_real):
                skipped.append((p, "a link to the data folder itself (a loop), not a class"))
            elif real in folders:
                skipped.append((p, f"the same folder as {folders[real].name}, not a class of its own"))
            else:
                folders[real] = p
        elif stat.S_ISREG(mode) and is_image_file(p):
            loose.append(p)
    return dict(sorted(folders.items(), key=lambda kv: kv[1].name)), sorted(loose)


def _folder_entries(root: Path, skipped: list[tuple[Path, str]]) -> list[tuple[Path, str, None]]:
    """(path, class, None) of every file in the class folders of ``root``, each real file in one class only."""
    folders, loose = _class_folders(root, skipped)
    if loose and not folders:
        raise DatasetError(
            f"{root} holds images directly; put them in one subfolder per class (e.g. {root}/NORMAL, {root}/PNEUMONIA)."
        )
    skipped += [(p, "not in a class subfolder") for p in loose]
    listed: list[tuple[Path, str, str]] = []
    classes_of: dict[str, list[tuple[Path, str]]] = {}
    for d in folders.values():
        files, passed = walk_files(d)
        skipped += passed
        for p, real in files:
            listed.append((p, d.name, real))
            classes_of.setdefault(real, []).append((p, d.name))
    entries = []
    for p, label, real in listed:
        where = classes_of[real]
        if len(where) > 1:
            owners = {folders[r].name for r in folders if _encloses(r, real)}
            if len(owners) == 1 and label in owners:
                pass  # the class whose folder really holds the file keeps it
            elif len(owners) == 1:
                owner = next(iter(owners))
                first = next(q for q, c in where if c == owner)
                skipped.append((p, f"a link to {first}, an image of class {owner!r}"))
                continue
            else:
                names = sorted({c for _, c in where})
                listing = ", ".join(map(repr, names))
                skipped.append((p, f"the same file is in classes {listing}, so its class is ambiguous"))
                continue
        entries.append((p, label, None))
    return entries


def scan_folder(
    root: str | Path,
    csv: str | Path | None = None,
    group_pattern: str | None = "auto",
    classes: Sequence[str] | None = None,
    check: bool = True,
) -> ImageFolderData:
    """List the images of a data folder (class subfolders) or of a CSV of ``path,label[,group]``.

    Parameters
    ----------
    root : path
        Folder with one subfolder per class.  With ``csv`` it is only the base for relative paths
        (pass the CSV's folder or None).
    csv : path, optional
        A CSV with columns ``path,label`` and optionally ``group`` (header row optional).
    group_pattern : str or None
        Regular expression whose first capture group, searched in the file name, is the patient/group;
        ``"auto"`` uses :data:`PATIENT_PATTERN`; None or ``"none"`` makes every file its own group.
        A CSV ``group`` column wins over the pattern.
    classes : sequence of str, optional
        Use these classes in this order (e.g. a model's classes); other subfolders/labels are skipped
        and listed. Default: every subfolder (or label) with images, sorted.
    check : bool
        Open each file's header and skip the ones that fail (fast: no decoding).

    Returns
    -------
    ImageFolderData
        Items sorted by class then path; ``skipped`` lists files not used and why.  Symbolic links
        are followed (see :func:`walk_files`): each real image counts once, in the class whose folder
        holds it; a file linked into several classes and held by none of them is skipped as ambiguous.

    Raises
    ------
    DatasetError
        The folder or CSV does not exist or cannot be read or parsed; one sentence.
    """
    rx = _resolve_pattern(group_pattern)
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    root, entries = _listed_entries(root, csv, skipped, notes)
    wanted = [str(c) for c in classes] if classes is not None else None
    items_raw, unreadable = _usable_entries(entries, wanted, check, rx, skipped)
    names = wanted if wanted is not None else sorted({lab for _, lab, _ in items_raw})
    index = {c: i for i, c in enumerate(names)}
    items = [Item(p, index[lab], g) for p, lab, g in items_raw]
    items.sort(key=lambda it: (it.label, str(it.path)))
    present = {lab for _, lab, _ in items_raw}
    lost = {c: unreadable[c] for c in sorted(unreadable) if c not in present}
    for note in notes:
        warnings.warn(note, GradCamWarning, stacklevel=2)
    return ImageFolderData(Path(root), list(names), items, skipped, lost, notes)


def _listed_entries(root, csv, skipped: list[tuple[Path, str]], notes: list[str]):
    """``(root, [(path, label, group or None)])`` from the CSV when one is given, else from the class folders."""
    if csv is None:
        root = _check_data_folder(root)
        return root, _folder_entries(root, skipped)
    csv = Path(csv)
    if not csv.is_file():
        raise DatasetError(f"No CSV file at {csv}.")
    root = Path(root) if root is not None else csv.parent
    return root, _screen_csv_rows(_read_csv(csv, root), root, skipped, notes)


def _check_data_folder(root) -> Path:
    """``root`` as a Path, checked to be a readable folder (one sentence otherwise)."""
    if root is None:
        raise DatasetError("No data folder was given.")
    root = Path(root)
    try:
        mode = os.stat(root).st_mode
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise DatasetError(f"No data folder at {root}.") from None
        why = e.strerror or type(e).__name__
        raise DatasetError(f"The data folder {root} could not be read ({why}).") from None
    if not stat.S_ISDIR(mode):
        raise DatasetError(f"{root} is a file, not a folder of class subfolders.")
    return root


def _usable_entries(entries: list[tuple[Path, str, str | None]], wanted: list[str] | None, check: bool, rx,
                    skipped: list[tuple[Path, str]]):
    """The (path, label, group) entries that are images of a wanted class (and open, when ``check``), the
    group from the pattern ``rx`` where none was given; the others are added to ``skipped``.  Returns them
    and {label: [(path, reason)]} of the unreadable ones."""
    items_raw: list[tuple[Path, str, str]] = []
    unreadable: dict[str, list[tuple[Path, str]]] = {}
    for path, label, group in entries:
        if not is_image_file(path):
            skipped.append((path, f"not an image file type ({path.suffix or 'no suffix'})"))
            continue
        if wanted is not None and label not in wanted:
            which = wanted if len(wanted) <= 10 else f"the {len(wanted)} requested classes"
            skipped.append((path, f"class {label!r} is not one of {which}"))
            continue
        if check:
            reason = _quick_check(path) if path.exists() else "file not found"
            if reason is not None:
                skipped.append((path, reason))
                unreadable.setdefault(label, []).append((path, reason))
                continue
        items_raw.append((path, label, group if group else group_of(path, rx)))
    return items_raw, unreadable


def _screen_csv_rows(rows: list[tuple[Path, str, str | None]], base: Path, skipped: list[tuple[Path, str]],
                     notes: list[str]) -> list[tuple[Path, str, str | None]]:
    """The CSV rows to use: each file once.

    Repeated rows (also the same file under two spellings) are used once, with a note; a file listed
    with two labels is left out and listed in ``skipped`` (its class is ambiguous); rows naming files
    outside the data folder ``base`` (``../x.png``, an absolute path elsewhere) are used as given, with
    a note that says so.  Cost and messages grow with the distinct files, not the rows: a CSV of a
    million rows naming two images gives two items, two header checks and one note.
    """
    base_abs = os.path.abspath(base)
    first: dict[str, int] = {}  # normalised path -> index in kept
    kept: list[tuple[Path, str, str | None]] = []
    labels: dict[int, set[str]] = {}
    n_repeats = 0
    for path, label, group in rows:
        key = os.path.normpath(os.path.abspath(path))
        k = first.get(key)
        if k is None:
            k = first.setdefault(os.path.realpath(key), len(kept))  # a link or another spelling of a listed file
            first[key] = k
            if k == len(kept):
                kept.append((path, label, group))
                continue
        n_repeats += 1
        if kept[k][1] != label:
            labels.setdefault(k, {kept[k][1]}).add(label)
    for k, names in labels.items():
        skipped.append((kept[k][0], f"listed with labels {', '.join(map(repr, sorted(names)))}, so its class is ambiguous"))
    if n_repeats:
        notes.append(f"The CSV names {len(kept)} file(s) in {len(rows)} rows; each file was used once "
                     f"({n_repeats} repeated row(s) left out).")
    outside = [p for p, _, _ in kept if not _encloses(base_abs, os.path.normpath(os.path.abspath(p)))]
    if outside:
        notes.append(f"{len(outside)} row(s) of the CSV name files outside the data folder {base} "
                     f"(e.g. {outside[0]}); they were used as given.")
    return [row for i, row in enumerate(kept) if i not in labels]


def read_csv_rows(path: Path, expected: str, name: str | None = None) -> list[list[str]]:
    """The non-blank rows (lists of str) of the CSV file ``path`` (a UTF-8 byte-order mark allowed).

    ``expected`` names the rows' layout in the messages (e.g. "path,label"), ``name`` the file (default
    its file name).  Raises DatasetError (one sentence) when the file cannot be read or has no rows.
    """
    name = path.name if name is None else name
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in _csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, _csv.Error) as e:
        raise DatasetError(f"The CSV {name} could not be read ({e}).") from None
    if not rows:
        raise DatasetError(f"The CSV {name} is empty; expected rows of {expected}.")
    return rows


def _read_csv(path: Path, base: Path) -> list[tuple[Path, str, str | None]]:
    rows = read_csv_rows(path, "path,label")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        ig = header.index("group") if "group" in header else None
        rows = rows[1:]
    else:
        ip, il, ig = 0, 1, (2 if len(rows[0]) > 2 else None)
    out = []
    for n, r in enumerate(rows, start=2):
        if len(r) <= max(ip, il):
            raise DatasetError(f"Line {n} of {path.name} has no label; expected path,label.")
        p = Path(r[ip].strip())
        out.append((p if p.is_absolute() else base / p, r[il].strip(),
                    r[ig].strip() if ig is not None and len(r) > ig and r[ig].strip() else None))
    return out
