"""``napari-gradcam methods`` and ``compare``: the explanation methods, and all of them on one image with scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import (
    PROG, _fmt_kw, _image, _load, _tqdm, add_device, add_model_options, add_quiet, atomic_write_many, check_outputs,
    number_option, safe_file_names, shown, tiff_writer,
)


def cmd_methods(args) -> int:
    from ..engine.methods import list_methods
    from ..errors import GradCamError

    rows = list_methods()
    if args.family:
        families = sorted({r["family"] for r in rows})
        rows = [r for r in rows if r["family"] == args.family]
        if not rows:
            raise GradCamError(f"No method of family {args.family!r}; the families are {', '.join(families)}.")
    width = max(len(r["name"]) for r in rows) + 2
    fam = max(len(r["family"]) for r in rows) + 2
    for r in rows:
        print(f"{r['name']:<{width}}{r['family']:<{fam}}{r['description']}")
    return 0


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
    bar = None
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if not args.quiet:
            bar = bar or _tqdm(total=total, desc="methods", unit="method", leave=False)
            bar.update(done - bar.n)
    if bar is not None:
        bar.close()
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
    """Add ``methods`` and ``compare`` to the subparsers ``sub``."""
    p = sub.add_parser("methods", help="list the explanation methods (name, family, description)",
                       description="List every explanation method `explain --method` and `compare` accept.",
                       epilog=f"examples:\n  {PROG} methods\n  {PROG} methods --family attribution\n", **_fmt_kw())
    p.add_argument("--family", metavar="FAMILY", help="only the methods of one family (cam, attribution)")
    p.set_defaults(func=cmd_methods)

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
