"""``napari-gradcam demo``: napari with a synthetic X-ray, the demo model and its heatmaps."""

from __future__ import annotations


from ._common import _fmt_kw, check_outputs


def cmd_demo(args) -> int:
    from .._napari.demo import run_demo

    check_outputs([(args.screenshot, "screenshot", "--screenshot")])
    return int(run_demo(screenshot=args.screenshot) or 0)



def register(sub) -> None:
    """Add this module's command(s) to the subparsers ``sub``."""
    # demo
    p = sub.add_parser(
        "demo", help="open napari with a synthetic X-ray, the demo model and its heatmaps",
        description="Open napari with a synthetic chest X-ray, the bundled demo model and its Grad-CAM heatmap. "
                    "With --screenshot, save a screenshot of the window and exit.", **_fmt_kw())
    p.add_argument("--screenshot", metavar="FILE.png", help="save a screenshot and close")
    p.set_defaults(func=cmd_demo)
