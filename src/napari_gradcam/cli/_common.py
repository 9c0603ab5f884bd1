"""Shared pieces of the command line: the parser classes, option helpers, image and output helpers."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Sequence

from ..errors import GradCamError, ParameterError, shown
from ..overlays import classes_overlay_rgb, overlay_rgb  # noqa: F401 - for the commands
from ..outputs import (  # noqa: F401 - for the commands
    atomic_write, atomic_write_many, check_outputs, image_writer, safe_file_names, tiff_writer,
)

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
    print(f"{PROG}: error: {shown(msg)}", file=sys.stderr)


def _note(msg: str) -> None:
    print(f"{PROG}: note: {shown(msg)}", file=sys.stderr)


# ----------------------------------------------------------------------------- number options
def int_type(minimum: int | None = None, maximum: int | None = None, name: str = "int"):
    """An argparse ``type=`` for whole numbers in [minimum, maximum] (one-line usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {shown(repr(text))}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {_range_text(minimum, maximum, value)}, not {value:,}")
        return value

    parse.__name__ = name
    return parse


def float_type(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
               name: str = "float", what: str = ""):
    """An argparse ``type=`` for finite numbers (NaN and infinity refused) in a range (``what``: the
    quantity the range message names, e.g. "Overlap must be between 0 and 0.95")."""

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {shown(repr(text))}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be greater than {above:g}, not {value:g}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            quantity = f"{what} " if what else ""
            raise argparse.ArgumentTypeError(f"{quantity}must be {_range_text(minimum, maximum, value)}, not {value:g}")
        return value

    parse.__name__ = name
    return parse


def _range_text(minimum, maximum, value=None) -> str:
    """The range a value broke: 'between A and B', or 'at least A' / '0 or more' for a value below a
    range whose maximum is only a plausibility cap (1000 times the minimum or more), 'at most B' without
    a minimum; whole numbers with thousands separators."""
    def num(v) -> str:
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"

    if minimum is not None and (maximum is None or (value is not None and value < minimum
                                                    and maximum >= 1000 * max(1, abs(minimum)))):
        return "0 or more" if minimum == 0 else f"at least {num(minimum)}"
    if minimum is None:
        return f"at most {num(maximum)}"
    return f"between {num(minimum)} and {num(maximum)}"


#: The largest count any option takes (epochs, steps, tiles per batch...): larger values are typing
#: errors that would otherwise run for days or ask for terabytes; the options below are narrower.
MAX_COUNT = 1_000_000
positive_int = int_type(1, MAX_COUNT, name="positive_int")
non_negative_int = int_type(0, MAX_COUNT, name="non_negative_int")
seed_int = int_type(0, 2**32 - 1, name="seed")
finite_float = float_type(-1e12, 1e12, name="finite_float")
positive_float = float_type(above=0, maximum=1e12, name="positive_float")
non_negative_float = float_type(minimum=0, maximum=1e12, name="non_negative_float")
fraction = float_type(0, 1, name="fraction")

#: Every bounded number option of the command line, by what it counts, so that a value that cannot
#: work (``--steps 1000000000``, ``--input-size 0``, ``--overlap 0.99``) is a one-line usage error
#: before any file is read.  The core checks the same ranges again for Python callers.
NUMBER_OPTIONS = {
    "batch_size": int_type(1, 4096, name="batch_size"),        # images or tiles per forward pass
    "input_size": int_type(16, 4096, name="input_size"),       # the network's input side, px (as train's)
    "tile": int_type(1, 16384, name="tile"),                   # engine.tiling's MAX_TILE (its sentence below 8)
    "overlap": float_type(0, 0.95, name="overlap", what="Overlap"),  # engine.tiling's range
    "steps": int_type(1, 1000, name="steps"),                  # deletion/insertion curve steps
    "shifts": int_type(None, 8, name="shifts"),                # engine.shifts.MAX_SHIFTS (its sentence below 1)
    "pixels": float_type(0, 1e6, name="pixels"),               # tolerances and reference sizes
    "mean": float_type(-1e6, 1e6, name="mean"),
    "std": float_type(above=0, maximum=1e6, name="std"),
    "minutes": float_type(0, 1e6, name="minutes"),             # time budgets (0: none)
}


def number_option(kind: str):
    """The argparse ``type=`` of a number option of kind ``kind`` (a key of :data:`NUMBER_OPTIONS`)."""
    return NUMBER_OPTIONS[kind]


def check_colormap(name: str) -> str:
    """``name`` if matplotlib knows the colormap, else one sentence listing some that exist."""
    from matplotlib import colormaps

    if name not in colormaps:
        some = ", ".join(c for c in ("inferno", "magma", "viridis", "turbo", "jet", "hot", "gray") if c in colormaps)
        raise ParameterError(f"Unknown colormap {name!r}; use a matplotlib colormap such as {some}.")
    return name


def _load(model, device: str = "auto"):
    """Load MODEL: a path, or the parsed arguments of a command that called :func:`add_model_options`
    (then the options describe a bare file and what loading assumed is printed as notes)."""
    from ..bundle import load_model

    if not isinstance(model, argparse.Namespace):
        return load_model(model, device=device)
    args = model
    bundle = load_model(args.model, architecture=args.arch, classes=args.model_classes, in_channels=args.in_channels,
                        input_size=args.input_size, device=getattr(args, "device", device), mean=args.mean,
                        std=args.std)
    if not getattr(args, "quiet", False):
        for note in bundle.notes:
            print(f"note: {note}", file=sys.stderr)
    return bundle


def add_model_options(p, classes_flag: bool = True) -> None:
    """Options that describe a model file that does not describe itself (a .pt/.pth state dict, an
    .onnx graph); :func:`_load` reads them.  ``classes_flag=False`` for a command whose --classes means
    something else (the option is then only --model-classes)."""
    g = p.add_argument_group("describing a bare model file (.pt/.pth state dict or .onnx)")
    g.add_argument("--arch", metavar="NAME",
                   help="architecture of a state dict: simple_cnn, resnet18, convnext_tiny (any torchvision "
                        "classifier) or timm:NAME")
    flags = ("--classes", "--model-classes") if classes_flag else ("--model-classes",)
    g.add_argument(*flags, dest="model_classes", nargs="+", metavar="CLASS", help="the model's class names, in order")
    g.add_argument("--in-channels", type=int, choices=(1, 3), help="input channels (default: read from the weights)")
    g.add_argument("--input-size", type=number_option("input_size"), metavar="N",
                   help="input side in pixels, 16-4096 (default 224; ONNX: the graph's)")
    g.add_argument("--mean", type=number_option("mean"), nargs="+", metavar="M",
                   help="normalisation mean per channel (default: ImageNet's for torchvision/timm/ONNX)")
    g.add_argument("--std", type=number_option("std"), nargs="+", metavar="S",
                   help="normalisation std per channel (positive)")


def _image(path: str):
    from ..data import read_image
    from ..preprocess import check_image

    return check_image(read_image(path))


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


@contextlib.contextmanager
def dask_progress(quiet: bool = False):
    """A progress bar on stderr for every dask computation inside (the value-range pass over a lazy image,
    the lazy heatmaps' chunks) that lasts more than 2 s; nothing when ``quiet``."""
    if quiet:
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=2.0, out=sys.stderr):
        yield


def _expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files among ``paths`` and in the folders among them (recursively, links followed, each
    real file once), and what was passed over with the reason."""
    import os

    from ..data import is_image_file, walk_files

    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    first: dict[str, Path] = {}  # real path -> the path it is listed under
    for p in map(Path, paths):
        if p.is_dir():
            found, passed = walk_files(p)
            skipped += passed
            found = [(f, r) for f, r in found if is_image_file(f)]
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
    p.add_argument("--shifts", type=number_option("shifts"), default=1, metavar="K",
                   help="average the maps of K x K sub-cell shifts of the input: a K times finer heatmap "
                        "(K*K passes, batched; 1 = off, 4 is a good choice)")



class Bar:
    """A command's one progress bar on stderr (none when ``quiet``): opened at a stage's first step, opened
    anew when the stage changes, closed when the stage or the run ends."""

    def __init__(self, quiet: bool = False):
        self.quiet = bool(quiet)
        self._bar, self._stage = None, None

    def step(self, done: int, total: int | None, desc: str, unit: str = "step", stage=None, **postfix) -> None:
        """Show ``done`` of ``total`` (``stage``, default ``desc``, tells one bar from the next); ``postfix``:
        figures shown after the bar (a loss, a speed)."""
        if self.quiet:
            return
        stage = desc if stage is None else stage
        if self._bar is None or stage != self._stage:
            self.close()
            self._bar, self._stage = _tqdm(total=total, desc=desc, unit=unit, leave=False), stage
        self._bar.update(done - self._bar.n)
        if postfix:
            self._bar.set_postfix(refresh=False, **postfix)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def drive(gen, each=None, *, quiet: bool = False):
    """Run a command's generator to its end (:func:`napari_gradcam.generators.run_to_end`) and return its value.

    ``each(value, bar)`` is called on every yielded value with the command's :class:`Bar`; on Ctrl-C or an
    error the generator is closed (its own clean-up runs) and so is the bar, so the message has a line of its own.
    """
    from ..generators import run_to_end

    bar = Bar(quiet)
    try:
        return run_to_end(gen, None if each is None else lambda value: each(value, bar))
    except BaseException:
        gen.close()
        raise
    finally:
        bar.close()


def steps(desc: str, unit: str):
    """``each`` for :func:`drive` over a generator of ``(done, total)`` steps: one bar named ``desc``."""

    def each(step, bar: Bar) -> None:
        bar.step(step[0], step[1], desc, unit)

    return each
