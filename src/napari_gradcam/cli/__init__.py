"""``napari-gradcam``: train, evaluate, predict and explain from the command line.

Every command is a thin layer over the same core the napari plugin uses.  User errors (missing
files, empty data folders, unknown classes or layers) print one sentence and exit with code 2;
Ctrl-C prints "cancelled" and exits with 130.  Heavy libraries are imported inside the commands,
so ``napari-gradcam --help`` is instant.  One module per command registers it (``_COMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Sequence

from .. import __version__
from ..errors import GradCamError, ResourceError
from . import audit as audit_cli
from . import compare, convert, demo, evaluate, explain, info, localize, methods, predict, tile, train, unlearn
from ._common import PROG, _err, _Parser, classes_overlay_rgb, overlay_rgb

__all__ = ["main", "build_parser", "overlay_rgb", "classes_overlay_rgb", "PROG"]

#: One module per command, each with ``register(sub)``; in the order ``--help`` lists them.
_COMMAND_MODULES = (train, evaluate, predict, explain, tile, localize, methods, compare, demo, convert, info,
                    audit_cli, unlearn)

_EPILOG = f"""\
examples:
  {PROG} train chest_xray/train --out pneumonia.safetensors --image-size 128 --epochs 8
  {PROG} evaluate pneumonia.safetensors chest_xray/test --json report.json --plot report.png
  {PROG} predict pneumonia.safetensors scans/ more/scan1.png --csv predictions.csv
  {PROG} explain pneumonia.safetensors scan.png --method gradcam --out heat.tif --overlay heat.png
  {PROG} tile pneumonia.safetensors slide.tif --tile 224 --overlap 0.5 --out slide_heatmaps/
  {PROG} demo
  {PROG} info r18.pt --arch resnet18 --classes NORMAL PNEUMONIA
  {PROG} convert r18.pt --arch resnet18 --classes NORMAL PNEUMONIA --out r18.safetensors
  {PROG} methods
  {PROG} compare pneumonia.safetensors scan.png --json scores.json

Each command has its own --help.  Errors you can fix (a missing file, an empty data folder, an
unknown class or layer) print one sentence and exit with code 2.
"""



def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog=PROG,
        description="See why an image classifier decided: train a classifier, evaluate it, predict and explain "
                    "its decisions with CAM / Grad-CAM / Grad-CAM++ heatmaps, headless.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _COMMAND_MODULES:
        mod.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 cancelled)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        with _notes_on_stderr():
            return int(args.func(args) or 0)
    except GradCamError as e:
        _close_bars()
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _close_bars()
        print("cancelled", file=sys.stderr)
        return 130
    except MemoryError:  # whatever ran out of memory: the package's ResourceError sentence, never a traceback
        _close_bars()
        _err(str(memory_error(getattr(args, "command", None))))
        return 2
    except OSError as e:  # a file that vanished or cannot be opened mid-run: one sentence, not a traceback
        _close_bars()
        _err(f"{e.strerror or 'cannot access'}: {e.filename}." if e.filename else f"{e.strerror or e}.")
        return 2


def _close_bars() -> None:
    """Close (and so clear) every progress bar still open, so that the message gets a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def memory_error(command: str | None = None) -> ResourceError:
    """The :class:`ResourceError` a MemoryError becomes on the command line (one sentence)."""
    from ..resources import available_memory, format_bytes

    what = f"'{command}'" if command else "The command"
    return ResourceError(
        f"{what} ran out of memory ({format_bytes(available_memory())} available now); use smaller inputs, "
        "a smaller --batch-size or --tile, or fewer classes.")


@contextlib.contextmanager
def _notes_on_stderr():
    """GradCamWarnings (far more tiles than needed, a CSV naming files many times) as one
    ``napari-gradcam: note: ...`` line each on stderr, instead of Python's warning format."""
    from ..errors import GradCamWarning
    from ._common import _note

    def show(message, category, *_args, **_kw):
        if issubclass(category, GradCamWarning):
            _note(str(message))
        else:
            previous(message, category, *_args, **_kw)

    with warnings.catch_warnings():
        warnings.simplefilter("always", GradCamWarning)
        previous = warnings.showwarning
        warnings.showwarning = show
        yield


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
