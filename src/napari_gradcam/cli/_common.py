"""Shared pieces of the command line: the parser classes, option helpers, image and output helpers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import GradCamError

PROG = "napari-gradcam"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (and exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; shows defaults that say something."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d not in (None, False, argparse.SUPPRESS) and "%(default)" not in text
                and action.option_strings and not isinstance(action, argparse._VersionAction)):
            text += " (default: %(default)s)"
        return text


def _fmt_kw() -> dict:
    return {"formatter_class": _Formatter}


# ----------------------------------------------------------------------------- helpers
def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _load(model: str, device: str = "auto"):
    from ..bundle import load_model

    return load_model(model, device=device)


def _image(path: str):
    from ..data import read_image
    from ..preprocess import check_image

    return check_image(read_image(path))


def _write_tiff(path: Path, data, **meta) -> Path:
    import numpy as np
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(data, dtype=np.float32), photometric="minisblack", metadata=meta or None)
    return path


def overlay_rgb(image, heat, colormap: str = "inferno", alpha: float = 0.5):
    """Image in gray with a colormapped heatmap alpha-blended on top -> (H, W, 3) uint8.

    ``image`` is (H, W) or (H, W, 3|4) of any dtype (scaled by its own min/max), ``heat`` (H, W) in [0, 1].
    """
    import numpy as np
    from matplotlib import colormaps

    from ..preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    if heat.shape != gray.shape:
        raise GradCamError(f"The heatmap's shape {heat.shape} differs from the image's {gray.shape}.")
    lut = colormaps[colormap](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    colored = lut[np.round(heat * 255).astype(np.uint8)]
    out = gray[..., None] * (1 - alpha) + colored * alpha
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def classes_overlay_rgb(image, heatmaps, alpha: float = 0.6, class_indices=None):
    """Overlay of several class heatmaps (C, H, W): each pixel coloured by its strongest class (the
    class's colour of :mod:`napari_gradcam.colours`, by its index ``class_indices[c]`` in the model,
    default ``c``), with opacity ``alpha`` times that class's heat -> (H, W, 3) uint8."""
    import numpy as np

    from ..colours import class_colour
    from ..preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    h = np.clip(np.asarray(heatmaps, dtype=np.float32), 0, 1)
    top = h.argmax(0)
    strength = h.max(0)
    indices = range(h.shape[0]) if class_indices is None else class_indices
    colors = np.asarray([class_colour(i) for i in indices], dtype=np.float32).reshape(-1, 3)
    a = (alpha * strength)[..., None]
    out = gray[..., None] * (1 - a) + colors[top] * a
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _write_png(path: Path, rgb) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


def _expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files among ``paths`` and in the folders among them (recursively, links followed, each
    real file once), and what was passed over with the reason."""
    import os

    from ..data import IMAGE_SUFFIXES, walk_files

    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    first: dict[str, Path] = {}  # real path -> the path it is listed under
    for p in map(Path, paths):
        if p.is_dir():
            found, passed = walk_files(p)
            skipped += passed
            found = [(f, r) for f, r in found if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            found = [(p, os.path.realpath(p))]
        else:
            why = "not a regular file" if p.exists() else ("a broken link" if p.is_symlink() else "not found")
            skipped.append((p, why))
            continue
        for f, real in found:
            if real in first:
                skipped.append((f, f"the same file as {first[real]}, listed once"))
            else:
                first[real] = f
                files.append(f)
    return files, skipped


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'")


def add_quiet(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")


def add_shifts(p):
    p.add_argument("--shifts", type=int, default=1, metavar="K",
                   help="average the maps of K x K sub-cell shifts of the input: a K times finer heatmap "
                        "(K*K passes, batched; 1 = off, 4 is a good choice)")

