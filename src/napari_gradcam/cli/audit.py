"""``napari-gradcam audit``: a data set's strategies and shortcuts (see :mod:`napari_gradcam.audit`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import (
    PROG, _fmt_kw, _load, add_device, add_model_options, add_quiet, drive, int_type, number_option, shown, steps,
)


def cmd_audit(args) -> int:
    from ..audit.findings import ConfirmSettings
    from ..audit.run import iter_audit
    from ..errors import ParameterError

    if args.resume and args.overwrite:
        raise ParameterError("Give --resume or --overwrite, not both.")
    if args.workers and args.scheduler:
        raise ParameterError("Give --workers or --scheduler, not both.")
    from ..outputs import check_output

    check_output(args.out, "folder", "--out", inputs=[args.model, args.folder])
    bundle = _load(args)
    layer = args.layer[0] if args.layer and len(args.layer) == 1 else args.layer
    gen = iter_audit(bundle, args.folder, method=args.method, layer=layer, masks=args.masks, out=args.out,
                     resume=args.resume, overwrite=args.overwrite, batch_size=args.batch_size,
                     max_clusters=args.max_clusters, confirm=not args.no_confirm, workers=args.workers,
                     scheduler=args.scheduler, confirm_settings=ConfirmSettings(fill=args.fill),
                     model_name=str(args.model))
    result = _run(gen, args.quiet)
    short = result.shortcuts
    print(f"{len(result.table)} image(s), {len(result.clusters)} strategies, {len(short)} likely shortcut(s); "
          f"report: {shown(Path(args.out) / 'report.html')}")
    for c in short:
        print(f"  {shown(args.out)}:{c['id']}  {c['class']}, {c['size']} image(s), box {[round(v, 2) for v in c['box']]}: "
              f"{c['reason']}")
    if args.compare:
        _compare(bundle, args.compare, args.out)
    return 0


def _compare(bundle, old: str, out: str) -> None:
    """Re-run an old audit's findings on this model; written into DIR's findings.json and report."""
    from ..audit.result import Audit
    from ..unlearn.proof import recheck

    comparison = recheck(bundle, old)
    audit = Audit.load(out)
    audit.findings["comparison"] = comparison
    audit.save(out)
    for r in comparison["findings"]:
        print(f"  old finding {r['id']} ({r['class']}): {'gone' if r['gone'] else 'STILL USED'}; {r['reason']}")


def cmd_explain_folder(args) -> int:
    """``explain MODEL FOLDER --out DIR``: one heatmap TIFF per image, through the batched pass."""
    from ..audit.folder import iter_explain_folder
    from ..outputs import check_output

    from ..engine.methods import get_method
    from ..errors import ParameterError

    given = [flag for flag, on in (("--target", args.target is not None), ("--overlay", args.overlay is not None),
                                   ("--shifts", args.shifts != 1), ("--smooth", bool(args.smooth))) if on]
    if given:
        raise ParameterError(f"With a folder, explain writes each image's predicted-class map; {', '.join(given)} "
                             "apply to one image.")
    if get_method(args.method).signed:
        raise ParameterError(f"With a folder, explain writes class evidence maps in [0, 1]; "
                             f"{get_method(args.method).title} keeps its sign: explain one image at a time.")
    check_output(args.out, "folder", "--out", inputs=[args.model, args.image])
    bundle = _load(args)
    layer = args.layer[0] if args.layer and len(args.layer) == 1 else args.layer
    # the bar opens at the first step, once the folder has been read (an error gets a line of its own)
    skipped = drive(iter_explain_folder(bundle, args.image, args.out, args.method, layer,
                                        getattr(args, "batch_size", 32)), steps("explain", "img"),
                    quiet=getattr(args, "quiet", False))
    print(f"heatmaps written to {shown(args.out)}" + (f"; {len(skipped)} file(s) skipped, e.g. {shown(skipped[0][0])} "
                                                      f"({shown(skipped[0][1])})" if skipped else ""))
    return 0


def _run(gen, quiet: bool):
    """Drive the audit's events with one tqdm bar per stage; returns the Audit."""
    return drive(gen, _audit_event, quiet=quiet)


def _audit_event(ev, bar) -> None:
    """The start and end lines, and a bar per stage (explain, cluster, confirm), unless quiet."""
    if bar.quiet:
        return
    if ev.kind in ("start", "done"):
        print(shown(ev.message), file=sys.stderr)
    elif ev.total:
        unit = {"explain": "img", "cluster": "class", "confirm": "cluster"}.get(ev.kind, "step")
        bar.step(ev.done, ev.total, ev.kind, unit)

def register(sub) -> None:
    """Add the ``audit`` command to the subparsers ``sub``."""
    from ..engine.methods import method_names

    p = sub.add_parser(
        "audit", help="audit a data set: where the model looks, its strategies, and which are shortcuts",
        description="Explain every image of FOLDER (class subfolders named like the model's classes give labels; "
                    "a folder of images has none; or a CSV of path[,label]) in batches, measure where the evidence "
                    "lies (outer frame, a coarse grid, outside --masks), cluster each predicted class's maps into "
                    "strategies (spectral clustering, SpRAy), and test each cluster's region by removal "
                    "(inpainting) and insertion into other classes' images, each against a control region of the "
                    "same size. Writes DIR/images.csv, findings.json, maps.zarr and report.html. An interrupted "
                    "audit continues with --resume.",
        epilog=f"""examples:
  {PROG} audit m.safetensors chest_xray/train --out audit/
  {PROG} audit m.safetensors scans/ --out audit/ --masks lung_masks/ --method gradcam++ --max-clusters 6
  {PROG} audit m.safetensors chest_xray/train --out audit/ --resume
  {PROG} audit m.safetensors chest_xray/train --out audit/ --workers 4
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a model file (.safetensors bundle, .pt/.pth with --arch, .onnx)")
    p.add_argument("folder", metavar="FOLDER", help="a folder of images (class subfolders give labels) or a CSV")
    p.add_argument("--out", required=True, metavar="DIR", help="the audit folder to write")
    p.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                   help="explanation method (see 'napari-gradcam methods')")
    p.add_argument("--layer", nargs="+", metavar="NAME", help="layer(s) to explain; default the method's own")
    p.add_argument("--masks", metavar="DIR", help="masks (e.g. lungs) with the images' relative names")
    p.add_argument("--batch-size", type=number_option("batch_size"), default=32, metavar="N", help="images per pass")
    p.add_argument("--max-clusters", type=int_type(1, 64, name="--max-clusters"), default=8, metavar="K",
                   help="most strategies per class")
    p.add_argument("--fill", default="harmonic", choices=("harmonic", "biharmonic", "median"),
                   help="how removal fills a region: harmonic (smooth, bounded by its surroundings), biharmonic "
                        "inpainting (scikit-image) or the median of its surroundings")
    p.add_argument("--compare", metavar="OLD_DIR[:ID]",
                   help="re-run an earlier audit's findings (removal and insertion) on this model and say which are gone")
    p.add_argument("--no-confirm", action="store_true", help="skip the removal and insertion tests")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue an interrupted audit (or reuse DIR's maps)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.add_argument("--workers", type=int_type(1, 256, name="--workers"), metavar="N",
                   help="run the explanation pass on a local dask cluster of N processes")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the explanation pass on this dask scheduler")
    add_device(p)
    add_model_options(p)
    add_quiet(p)
    p.set_defaults(func=cmd_audit)
