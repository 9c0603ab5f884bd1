"""``napari-gradcam localize``: how well heatmaps point at lesions, scored against masks."""

from __future__ import annotations

from ._common import (
    PROG, Bar, _fmt_kw, _load, add_device, add_model_options, add_quiet, add_shifts, check_outputs, fraction,
    number_option,
)


def cmd_localize(args) -> int:
    from ..localisation import localize_folder

    check_outputs([(args.json, "json", "--json")], inputs=[args.model, args.images_dir, args.masks_dir])
    bar = Bar(args.quiet)
    try:
        report = localize_folder(_load(args), args.images_dir, args.masks_dir, methods=args.method,
                                 json_path=args.json, curves=args.curves, target=args.target,
                                 progress=lambda done, total: bar.step(done, total, "localising", "img"),
                                 device=args.device, tolerance=args.tolerance, level=args.level, shifts=args.shifts,
                                 tolerance_at=args.tolerance_at or None, bootstrap=args.bootstrap, seed=args.seed)
    finally:
        bar.close()
    print(report.table())
    return 0


def register(sub) -> None:
    """Add ``localize`` to the subparsers ``sub``."""
    from ..engine.methods import method_names

    p = sub.add_parser(
        "localize", help="how well heatmaps point at lesions: pointing game, energy, IoU/Dice, deletion/insertion",
        description="Score MODEL's heatmaps against lesion masks. IMAGES_DIR holds the images (in class subfolders "
                    "named like the model's classes, or flat), MASKS_DIR label images with the same relative "
                    "paths or file stems (nonzero = lesion). Images with an empty mask are skipped. Prints a table "
                    "per method; --json writes every image's scores and the means.", epilog=f"""examples:
  {PROG} localize demo.safetensors phantoms/images phantoms/masks --json localisation.json
  {PROG} localize m.safetensors images/ masks/ --method gradcam gradcam++ --tolerance 15 --curves
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (optionally in class subfolders)")
    p.add_argument("masks_dir", metavar="MASKS_DIR", help="folder of lesion masks (label images)")
    p.add_argument("--method", nargs="+", default=["cam", "gradcam", "gradcam++"], choices=method_names(),
                   metavar="METHOD", help="methods to score (any of `napari-gradcam methods`)")
    p.add_argument("--json", metavar="OUT.json", help="write per-image scores and means as JSON")
    p.add_argument("--target", default="label", choices=("label", "predicted"),
                   help="explain the true class (from the class subfolder) or the predicted one")
    p.add_argument("--tolerance", type=number_option("pixels"), default=15, metavar="PX",
                   help="pointing game also counts a maximum within PX pixels of the mask, PX given at "
                        "--tolerance-at pixels and scaled to each image's larger side")
    p.add_argument("--tolerance-at", type=number_option("pixels"), default=224, metavar="SIZE",
                   help="image size at which --tolerance is given (Zhang et al.'s 15 px are at 224 px); "
                        "0: --tolerance is in each image's own pixels")
    p.add_argument("--level", type=fraction, default=0.5, metavar="F", help="fixed threshold, a fraction of the maximum")
    p.add_argument("--curves", action="store_true", help="also deletion/insertion curves and their AUC (slower)")
    from ._evaluate_stats import add_bootstrap_options

    add_bootstrap_options(p)
    add_shifts(p)
    add_device(p)
    add_quiet(p)
    add_model_options(p)
    p.set_defaults(func=cmd_localize)
