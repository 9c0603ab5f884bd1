"""``napari-gradcam compare``: every method on one image, with deletion/insertion AUC and a sanity check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import (
    PROG, _fmt_kw, _image, _load, add_device, add_model_options, add_quiet, atomic_write_many, check_outputs,
    drive, number_option, safe_file_names, shown, steps, tiff_writer,
)


def cmd_compare(args) -> int:
    import numpy as np

    from ..compare import iter_compare_methods

    json_path, maps_dir = check_outputs([(args.json, "json", "--json"), (args.maps, "folder", "--maps")],
                                         inputs=[args.model, args.image])
    bundle = _load(args)
    image = _image(args.image)
    target = args.target
    if target is not None and target.lstrip("-").isdigit() and target not in bundle.classes:
        target = int(target)
    methods = args.method if args.method else None
    if methods == ["all"]:
        methods = "all"
    gen = iter_compare_methods(bundle, image, methods=methods, target=target, layer=args.layer, steps=args.steps)
    result = drive(gen, steps("methods", "method"), quiet=args.quiet)
    print(result.table())
    files = []
    if json_path is not None:
        text = json.dumps(result.to_dict(), indent=2) + "\n"
        files.append((json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    if maps_dir is not None:
        names = safe_file_names([row.method for row in result.rows])
        files += [(maps_dir / f"{name}.tif", tiff_writer(np.asarray(row.heatmap.data, np.float32), method=row.method,
                                                          signed=row.signed, cls=result.target))
                  for name, row in zip(names, result.rows)]
    atomic_write_many(files)  # all or nothing: a failed write leaves every previous file
    if not args.quiet:
        for path, _ in files:
            print(f"written: {shown(path)}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add ``compare`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "compare", help="every method on one image, with deletion/insertion AUC and a sanity check",
        description="Explain MODEL's decision on IMAGE with several methods and score each map: deletion and "
                    "insertion AUC (Petsiuk et al. 2018; lower / higher is more faithful) and the rank correlation "
                    "with the map of a copy of the model whose top layers are re-initialised (Adebayo et al. 2018; "
                    "a map that barely changes does not depend on the model and is flagged).",
        epilog=f"""examples:
  {PROG} compare m.safetensors scan.png --json scores.json
  {PROG} compare m.safetensors scan.png --method gradcam scorecam integrated-gradients --maps maps/
  {PROG} compare m.safetensors scan.png --method all --target PNEUMONIA
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a model file (.safetensors bundle, .pt/.pth, .onnx)")
    p.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, TIFF, ...)")
    p.add_argument("--method", nargs="+", metavar="METHOD",
                   help="methods to compare (see `methods`), or 'all'; default every method but the slow "
                        "scorecam and occlusion")
    p.add_argument("--json", metavar="OUT.json", help="write the scores as JSON")
    p.add_argument("--maps", metavar="DIR", help="also write each method's map as DIR/<method>.tif (float32)")
    p.add_argument("--target", metavar="CLASS", help="class name or index to explain; default the predicted class")
    p.add_argument("--layer", metavar="NAME", help="layer of the layer-based methods; default the model's target layer")
    p.add_argument("--steps", type=number_option("steps"), default=20, metavar="N", help="steps of the deletion/insertion curves")
    add_device(p)
    add_quiet(p)
    add_model_options(p)
    p.set_defaults(func=cmd_compare)
