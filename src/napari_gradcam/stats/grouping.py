"""Who belongs together: patients (for resampling) and subgroups (for tables), read from file names or CSVs.

Patients come from what the trainer already uses for its patient-held-out split
(:func:`napari_gradcam.data.scan_folder`'s ``group_pattern`` on file names, or a data CSV's ``group``
column), or from a table that names files and their patients (the Hannover set's ``manifest.csv`` with
``file,...,patient`` columns).  Subgroups come from a CSV column (``--groups CSV --group-column NAME``)
or from an audit folder's ``images.csv`` ``cluster`` column.  Rows are matched to images by path
(absolute, or relative to the CSV's folder) and, where that fails, by a file name that is unique in
the table.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from ..errors import DatasetError

__all__ = ["read_column", "table_groups", "patient_table", "patients_from_table", "resampling_units", "PATH_COLUMNS",
           "PATIENT_COLUMNS"]

#: Column names that hold the image's path, in the order they are looked for.
PATH_COLUMNS = ("path", "file", "filename", "image")
#: Column names that hold the patient, in the order they are looked for.
PATIENT_COLUMNS = ("patient", "patient_id", "group")


def _key(path: "str | Path") -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def _read_rows(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"The table {table} could not be read ({e}).") from None
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()} for r in rows]
    return header, rows


def read_column(table: "str | Path", column: str, paths: Sequence["str | Path"]) -> list["str | None"]:
    """The value of ``column`` for each of ``paths`` (None where no row names the file, or the cell is empty).

    Parameters
    ----------
    table : path of a CSV with a header row, one column of paths (see :data:`PATH_COLUMNS`) and ``column``.
    column : the column to read (its name, matched without regard to case).
    paths : the image files, in the order of the result.

    Raises
    ------
    DatasetError
        The table cannot be read, or has no path column or no such column (one sentence naming them).
    """
    table = Path(table)
    header, rows = _read_rows(table)
    lower = {h.lower(): h for h in header}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if path_col is None:
        raise DatasetError(f"The table {table.name} has no column of image paths (one of {', '.join(PATH_COLUMNS)}); "
                           f"its columns are {', '.join(header) or 'none'}.")
    col = lower.get(str(column).lower())
    if col is None:
        raise DatasetError(f"The table {table.name} has no column {column!r}; its columns are {', '.join(header)}.")
    by_path: dict[str, str] = {}
    by_name: dict[str, "str | None"] = {}
    for r in rows:
        raw, value = r.get(path_col, ""), r.get(col, "")
        if not raw:
            continue
        p = Path(raw)
        by_path[_key(p if p.is_absolute() else table.parent / p)] = value
        name = p.name
        by_name[name] = None if name in by_name and by_name[name] != value else value
    out: list[str | None] = []
    for p in paths:
        v = by_path.get(_key(p))
        if v is None:
            v = by_name.get(Path(p).name)
        out.append(v if v else None)
    return out


def patient_table(data_dir: "str | Path | None") -> "Path | None":
    """``DATA_DIR/manifest.csv`` (or the one in its parent) where it has a path and a patient column, else None."""
    if data_dir is None:
        return None
    for folder in (Path(data_dir), Path(data_dir).parent):
        table = folder / "manifest.csv"
        if table.is_file():
            try:
                header, _ = _read_rows(table)
            except DatasetError:
                continue
            names = {h.lower() for h in header}
            if names & set(PATH_COLUMNS) and names & set(PATIENT_COLUMNS):
                return table
    return None


def patients_from_table(table: "str | Path", paths: Sequence["str | Path"]) -> list["str | None"]:
    """Each file's patient from a table with a path column and one of :data:`PATIENT_COLUMNS`."""
    header, _ = _read_rows(Path(table))
    names = {h.lower() for h in header}
    column = next((c for c in PATIENT_COLUMNS if c in names), None)
    if column is None:
        raise DatasetError(f"The table {Path(table).name} has no patient column (one of {', '.join(PATIENT_COLUMNS)}).")
    return read_column(table, column, paths)


def resampling_units(paths: Sequence["str | Path"], groups: Sequence[str], table: "str | Path | None" = None
                     ) -> tuple[list[str], str]:
    """The patient of each image for the bootstrap, and one sentence saying where it came from.

    ``groups`` are the scan's groups (:func:`napari_gradcam.data.scan_folder` with a ``group_pattern``,
    each unmatched file its own group); a ``table`` (a manifest naming files and patients) wins for the
    files it names.
    """
    units = [str(g) for g in groups]
    source = "file names"
    if table is not None:
        found = patients_from_table(table, paths)
        units = [f"patient:{f}" if f is not None else u for f, u in zip(found, units)]
        source = f"{Path(table).name} ({sum(f is not None for f in found)} of {len(units)} images named)"
    return units, source


def table_groups(source: "str | Path", column: "str | None", paths: Sequence["str | Path"]
                 ) -> tuple[list["str | None"], str, str]:
    """Each image's subgroup from a CSV column or an audit folder's clusters.

    Parameters
    ----------
    source : a CSV, or an audit folder (its ``images.csv``; the default column is ``cluster``, where
        ``-1``, no cluster, becomes the subgroup ``none``)
    column : the column (required for a CSV without a ``group`` column)
    paths : the images, in the order of the result

    Returns
    -------
    (subgroup of each image or None, the column used, the table read)
    """
    source = Path(source)
    audit = source.is_dir()
    table = source / "images.csv" if audit else source
    if audit and not table.is_file():
        raise DatasetError(f"{source} is a folder without images.csv; --groups takes a CSV or an audit folder.")
    if not table.is_file():
        raise DatasetError(f"No groups table at {source}.")
    if column is None:
        header, _ = _read_rows(table)
        names = {h.lower() for h in header}
        column = "cluster" if "cluster" in names else "group" if "group" in names else None
        if column is None:
            raise DatasetError(f"Say which column of {table.name} holds the subgroups (--group-column); "
                               f"its columns are {', '.join(header)}.")
    values = read_column(table, column, paths)
    if column.lower() == "cluster":
        values = [None if v is None else "none" if v.strip() == "-1" else f"cluster {v}" for v in values]
    return values, column, str(table)
