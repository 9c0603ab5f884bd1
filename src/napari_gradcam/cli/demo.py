"""``napari-gradcam demo``: napari with a synthetic X-ray, the demo model and its heatmaps.

Before napari starts, the command checks what Qt needs to open a window and says in one sentence
what to do when it is missing (instead of Qt's abort): napari itself, a display, the
``libxcb-cursor0`` system library.  ``--screenshot`` without a display runs itself again under
``xvfb-run`` when Xvfb is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ._common import _err, _fmt_kw, check_outputs

#: set in the environment of the copy run under xvfb-run (so it never starts another)
UNDER_XVFB = "NAPARI_GRADCAM_UNDER_XVFB"
XVFB_SCREEN = "-screen 0 1600x1000x24"


def _has_display() -> bool:
    """Whether Qt can open windows here: not Linux/BSD (Windows, macOS), a display, or a platform set."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM"))


def _missing_napari() -> str | None:
    import importlib.util

    for module in ("napari", "qtpy"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return ("napari is not installed; install the plugin with it: pip install 'napari-gradcam[napari]' "
                    "(the other commands work without it).")
    return None


def _missing_xcb_cursor() -> bool:
    """Qt >= 6.5 opens X11 windows only with libxcb-cursor (Qt aborts with exit code 134 without it)."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb":
        return False
    if os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
        return False
    import ctypes.util

    return ctypes.util.find_library("xcb-cursor") is None


def _rerun_under_xvfb(args) -> int:
    xvfb = shutil.which("xvfb-run")
    command = [xvfb, "-a", "-s", XVFB_SCREEN, sys.executable, "-m", "napari_gradcam", "demo",
               "--screenshot", args.screenshot]
    env = dict(os.environ, **{UNDER_XVFB: "1"})
    return subprocess.run(command, env=env).returncode


def cmd_demo(args) -> int:
    check_outputs([(args.screenshot, "screenshot", "--screenshot")])
    problem = _missing_napari()
    if problem is None and not _has_display():
        if args.screenshot is None:
            problem = ("There is no display to open napari on: run it under a virtual display "
                       "(xvfb-run -a napari-gradcam demo) or save the demo as a picture "
                       "(napari-gradcam demo --screenshot demo.png).")
        elif os.environ.get(UNDER_XVFB) or not shutil.which("xvfb-run"):
            problem = ("There is no display for the screenshot and Xvfb is not installed: install it "
                       "(apt-get install xvfb) or run on a machine with a display.")
        else:
            return _rerun_under_xvfb(args)
    if problem is None and _missing_xcb_cursor():
        problem = ("Qt needs the system library libxcb-cursor0 to open napari's window: install it "
                   "(apt-get install libxcb-cursor0), or see scripts/setup.sh for the full list.")
    if problem is not None:
        _err(problem)
        return 2
    from .._napari.demo import run_demo

    return int(run_demo(screenshot=args.screenshot) or 0)


def register(sub) -> None:
    """Add this module's command(s) to the subparsers ``sub``."""
    # demo
    p = sub.add_parser(
        "demo", help="open napari with a synthetic X-ray, the demo model and its heatmaps",
        description="Open napari with a synthetic chest X-ray, the bundled demo model and its Grad-CAM heatmap. "
                    "With --screenshot, save a screenshot of the window and exit (without a display, under "
                    "xvfb-run when Xvfb is installed).", **_fmt_kw())
    p.add_argument("--screenshot", metavar="FILE.png", help="save a screenshot and close")
    p.set_defaults(func=cmd_demo)
