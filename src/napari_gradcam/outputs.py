"""Output files: checked before the work starts, written atomically, named safely.

* :func:`check_outputs` (every command calls it first): each output path is a file name with a known
  extension (or a folder), its folder exists or can be made and is writable, it is not a folder, a
  device or one of the inputs, and no two outputs are the same file.  One sentence per problem
  (:class:`~napari_gradcam.errors.OutputError`), before any model is loaded.
* :func:`atomic_write` / :func:`atomic_write_many`: a unique temporary file beside each target, fsync,
  rename.  A crash, a full disk or an exception mid-write leaves every previous file intact and no
  temporary file behind; a failed write is one sentence naming the file.  With several files (a tile
  folder, a heatmap and its overlays) every temporary file is written before the first rename, so a
  failure changes none of them.
* :func:`tiff_writer`, :func:`image_writer`: what to pass as ``write`` for a float32 TIFF and for an
  RGB(A) image in the format its extension names (the temporary file's own name ends in ``.tmp``).
* :func:`safe_file_names`: class names as file names, safely (no folders, no hidden files, no device
  names) and uniquely (``a/b``, ``a_b`` and ``a b`` stay three files, also on case-insensitive disks).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import OutputError, shown

#: Output kinds: the extensions each accepts and what it is (for messages).  "folder" takes any name.
OUTPUT_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "tiff": ((".tif", ".tiff"), "a float32 TIFF"),
    "image": ((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"), "an image"),
    "plot": ((".png", ".pdf", ".svg", ".jpg", ".jpeg"), "a plot"),
    "screenshot": ((".png", ".jpg", ".jpeg"), "a screenshot"),
    "json": ((".json",), "JSON"),
    "csv": ((".csv",), "CSV"),
    "model": ((".safetensors",), "a model bundle"),
    "folder": ((), "a folder"),
}

Writer = Callable[[str], None]


# ----------------------------------------------------------------------------- checking up front
def check_outputs(
    outputs: Iterable[tuple["str | os.PathLike | None", str, str]],
    inputs: Iterable["str | os.PathLike | None"] = (),
) -> list[Path | None]:
    """Check every output before the work starts; return them as Paths (None stays None).

    Parameters
    ----------
    outputs : (path or None, kind, label) triples; ``kind`` is a key of :data:`OUTPUT_KINDS`,
        ``label`` names the output in messages (the option, e.g. ``"--out"``).
    inputs : files and folders the command reads; no output may be one of them.

    Raises
    ------
    OutputError
        One sentence: a wrong extension, a folder or device where a file goes (or a file where a
        folder goes), a folder that cannot be made or written, an output that is an input, two
        outputs naming the same file.
    """
    ins = [Path(p) for p in inputs if p is not None]
    checked: list[tuple[Path, str]] = []
    result: list[Path | None] = []
    for path, kind, label in outputs:
        if path is None:
            result.append(None)
            continue
        p = check_output(path, kind, label, ins)
        for other, other_label in checked:
            if _same_path(p, other):
                raise OutputError(f"{other_label} and {label} name the same file {shown(p)}; give two different names.")
        checked.append((p, label))
        result.append(p)
    return result


def check_output(path: "str | os.PathLike", kind: str, label: str = "the output",
                 inputs: Sequence["str | os.PathLike"] = ()) -> Path:
    """Check one output path (see :func:`check_outputs`); returns it as a Path."""
    suffixes, what = OUTPUT_KINDS[kind]
    p = Path(path)
    where = f"Cannot write {label} {shown(path)}"
    if str(path) == "":
        raise OutputError(f"{label} is empty; give a file name.")
    if suffixes and p.suffix.lower() not in suffixes:
        ends = " or ".join(suffixes) if len(suffixes) <= 2 else ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
        raise OutputError(f"{where}: {what} is written as {ends}, not {p.suffix or 'a name without extension'}.")
    mode = _lstat_mode(p, where)
    if mode is not None and stat.S_ISLNK(mode):
        mode = _stat_mode(p, where)  # a link is written through: its target must be the right kind
    if kind == "folder":
        if mode is not None and not stat.S_ISDIR(mode):
            raise OutputError(f"{where}: it is a file, not a folder; give a folder name.")
    elif mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{where}: it is a folder; give a file name.")
    elif mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{where}: it is not a regular file (a device, pipe or socket), so it is not replaced.")
    for q in inputs:
        if _same_path(p, Path(q)):
            raise OutputError(f"{where}: it is one of the inputs, which would be overwritten; give another name.")
    _check_writable(p if kind == "folder" else p.parent)
    return p


def _lstat_mode(p: Path, where: str) -> int | None:
    try:
        return os.lstat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:  # a name too long, a null byte, a loop of links
        raise OutputError(f"{where}: {_reason(e)}.") from None


def _stat_mode(p: Path, where: str) -> int | None:
    try:
        return os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None  # a dangling link: its target is created
    except (OSError, ValueError) as e:
        raise OutputError(f"{where}: {_reason(e)}.") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (hard and symbolic links included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False


def nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (the output folder is only made when writing)."""
    folder = Path(os.path.abspath(folder))
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable(folder: Path) -> None:
    """A probe file is created and removed in ``folder`` or its nearest existing ancestor (nothing
    else is made: a refused run leaves no new folder behind)."""
    probe_dir = nearest_existing(folder)
    shown_folder = shown(folder) if str(folder) else "."
    if not probe_dir.is_dir():
        raise OutputError(f"The output folder {shown_folder} cannot be made: {shown(probe_dir)} is a file.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-gradcam-probe.", suffix=".tmp", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if probe_dir == Path(os.path.abspath(folder)):
            raise OutputError(f"The output folder {shown_folder} is not writable ({_reason(e)}); make it writable "
                              "or choose another output file.") from None
        raise OutputError(f"The output folder {shown_folder} cannot be made: {shown(probe_dir)} is not writable "
                          f"({_reason(e)}).") from None


# ----------------------------------------------------------------------------- atomic writing
def _errno_of(e: BaseException) -> int | None:
    """The OS error behind a failed write: an OSError's, or 'os error N' in a library's message."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = re.search(r"os error (\d+)|Os \{ code: (\d+)", str(e))  # Rust io errors (safetensors)
    return int(m.group(1) or m.group(2)) if m else None


def write_error(path: "str | os.PathLike", e: BaseException, existed: bool) -> OutputError:
    """One sentence for a failed write of ``path`` (``existed``: a previous file was left in place)."""
    code = _errno_of(e)
    why = os.strerror(code) if code else _reason(e)
    kept = "the previous file is unchanged" if existed else "nothing was written"
    err = OutputError(f"Could not write {shown(path)} ({why}); {kept}.")
    err.errno = code
    err.filename = str(path)
    return err


def _write_target(path: Path) -> Path:
    """The file a write replaces: ``path``, or a link's target; refuses folders and devices."""
    where = f"Cannot write {shown(path)}"
    mode = _lstat_mode(path, where)
    if mode is not None and stat.S_ISLNK(mode):
        path = Path(os.path.realpath(path))
        mode = _lstat_mode(path, where)
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{where}: it is a folder; give a file name.")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{where}: it is not a regular file (a device, pipe or socket), so it is not replaced.")
    return path


def current_umask() -> int:
    """The process's file mode creation mask (read from /proc where possible, so it is never changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
    os.umask(mask)
    return mask


def _temp_beside(target: Path) -> str:
    name = target.name if len(target.name) <= 200 else target.name[:200]
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return tmp


def atomic_write_many(items: Sequence[tuple["str | os.PathLike", Writer]], mode: int = 0o644) -> list[Path]:
    """Write several files all-or-nothing: every ``write(tmp_path)`` fills a temporary file beside its
    target (fsynced), and only when all succeeded are they renamed into place.

    Parameters
    ----------
    items : (path, write) pairs; ``write`` writes the whole file at the temporary path it is given
        (a str ending in ``.tmp``: pass the format explicitly to writers that guess it from the name).
    mode : permission bits of a new file, less the process's umask (an existing file keeps its own).

    Returns
    -------
    The paths written.  On any exception every temporary file is removed and every previous file is
    untouched; an OS error (a full disk, a read-only folder) becomes one-sentence OutputError.
    """
    paths = [Path(p) for p, _ in items]
    targets = [_write_target(p) for p in paths]
    existed = [t.is_file() for t in targets]
    temps: list[str] = []
    current = paths[0] if paths else None
    try:
        for path, target, old, (_, write) in zip(paths, targets, existed, items):
            current = path
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_beside(target)
            temps.append(tmp)
            keep = stat.S_IMODE(os.stat(target).st_mode) if old else mode & ~current_umask()
            write(tmp)
            os.chmod(tmp, keep)  # after the write: a writer may replace the file (safetensors makes it 0600)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for tmp, target in zip(temps, targets):
            current = target
            os.replace(tmp, target)
    except BaseException as e:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OutputError) or not (isinstance(e, OSError) or _errno_of(e)):
            raise
        i = paths.index(current) if current in paths else 0
        raise write_error(current, e, existed[i] if i < len(existed) else False) from e
    for folder in {t.parent for t in targets}:
        _fsync_folder(folder)
    return paths


def atomic_write(path: "str | os.PathLike", write: Writer, mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it to ``path`` in one step.

    Parameters
    ----------
    path : the final file; its folder is created if needed.  A symbolic link is written through
        (its target is replaced); a folder or a device is refused.
    write : writes the whole file at the temporary path it is given (a str ending in ``.tmp``).
    mode : permission bits of a new file (an existing file keeps its own).

    Returns
    -------
    Path of the written file.  On any exception the temporary file is removed and ``path`` is
    untouched; an OS error becomes :class:`~napari_gradcam.errors.OutputError` naming the file.
    """
    return atomic_write_many([(path, write)], mode)[0]


def atomic_folder(path: "str | os.PathLike", write: Writer) -> Path:
    """Call ``write(tmp_folder)`` to fill a new folder beside ``path`` (a zarr store, say), then put it in
    place of ``path``: a previous folder there is moved aside, replaced and deleted only once the new one
    is in place.  On any exception the new folder is removed and ``path`` is as it was; an OS error becomes
    :class:`~napari_gradcam.errors.OutputError` naming the folder.  A file at ``path`` is refused."""
    import shutil

    path = Path(path)
    mode = _lstat_mode(path, f"Cannot write {shown(path)}")
    if mode is not None and not stat.S_ISDIR(mode):
        raise OutputError(f"Cannot write {shown(path)}: it exists and is not a folder, so it is not replaced.")
    existed = mode is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    aside = None
    try:
        write(tmp)
        if existed:
            aside = tempfile.mkdtemp(prefix=f".{path.name[:200]}.", suffix=".old", dir=path.parent)
            os.replace(path, aside)  # an empty folder is replaced by the old one
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not path.exists():
            os.replace(aside, path)  # the old folder back
        if isinstance(e, OutputError) or not (isinstance(e, OSError) or _errno_of(e)):
            raise
        raise write_error(path, e, existed) from e
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- writers
def tiff_writer(data, **meta) -> Callable[[str], None]:
    """A writer (for :func:`napari_gradcam.outputs.atomic_write`) of ``data`` as a float32 TIFF."""
    import numpy as np

    arr = np.asarray(data, dtype=np.float32)

    def write(tmp: str) -> None:
        import tifffile

        tifffile.imwrite(tmp, arr, photometric="minisblack", metadata=meta or None)

    return write


def image_writer(rgb, path: "str | Path") -> Callable[[str], None]:
    """A writer of an (H, W, 3|4) uint8 image in the format ``path``'s extension names (PNG, JPEG, TIFF...);
    the alpha channel is dropped for formats without one."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"Cannot write {shown(path)}: {Path(path).suffix or 'no extension'} is not an image format.")

    def write(tmp: str) -> None:
        arr = rgb[..., :3] if fmt in ("JPEG", "BMP") and rgb.ndim == 3 and rgb.shape[-1] == 4 else rgb
        Image.fromarray(arr).save(tmp, format=fmt)

    return write


# ----------------------------------------------------------------------------- file names
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def _tag(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _clean(name: str) -> str:
    out = "".join(c if (c.isalnum() or c in "-_.") and c.isprintable() else "_" for c in name)
    out = "_" + out[1:] if out.startswith(".") else out
    return out[:80]


def safe_file_names(names: Sequence[str]) -> list[str]:
    """File-name stems for ``names`` (class names): safe and unique.

    A name made only of letters, digits, ``-``, ``_`` and ``.`` (not starting with a dot, not a
    device name such as ``CON``) is kept as it is.  Any other character becomes ``_`` and the name
    gets ``-`` plus 8 hex digits of its hash, so ``a/b`` -> ``a_b-3ec69c85`` while ``a_b`` stays
    ``a_b`` and ``a b`` -> ``a_b-7dbde935``.  Names equal up to case (``Normal``/``normal``) both get
    their hash: they would be one file on a case-insensitive disk.  Deterministic: the same class
    gets the same file name in every run.
    """
    names = [str(n) for n in names]
    clean = [_clean(n) for n in names]
    changed = [c != n or not c or c.split(".")[0].lower() in _RESERVED for n, c in zip(names, clean)]
    folded: dict[str, int] = {}
    for c, ch in zip(clean, changed):
        if not ch:
            folded[c.casefold()] = folded.get(c.casefold(), 0) + 1
    stems = []
    for n, c, ch in zip(names, clean, changed):
        stems.append(f"{c}-{_tag(n)}" if ch or folded[c.casefold()] > 1 else c)
    seen: set[str] = set()
    for i, s in enumerate(stems):  # a 32-bit hash collision, or a class literally named like a tagged one
        k = 2
        while s.casefold() in seen:
            s = f"{stems[i]}-{k}"
            k += 1
        seen.add(s.casefold())
        stems[i] = s
    return stems


__all__ = ["OUTPUT_KINDS", "check_outputs", "check_output", "atomic_write", "atomic_write_many",
           "atomic_write_text", "safe_file_names", "write_error", "nearest_existing", "tiff_writer", "image_writer"]
