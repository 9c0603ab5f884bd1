"""``napari-gradcam explain``: the heatmap(s) of one image (a folder: one map per image, see ``audit.py``)."""

from __future__ import annotations

import json
import os

from ._common import (
    PROG, _fmt_kw, _image, _load, add_device, add_model_options, add_shifts, atomic_write_many, check_colormap,
    check_outputs, classes_overlay_rgb, fraction, image_writer, overlay_rgb, shown, tiff_writer,
)


def cmd_explain(args) -> int:
    import numpy as np

    if os.path.isdir(args.image):  # a folder: one heatmap per image, batched (the audit's pass)
        from .audit import cmd_explain_folder

        return cmd_explain_folder(args)

    from ..engine import explain
    from ..engine.scaling import scale_heatmaps

    out, overlay = check_outputs([(args.out, "tiff", "--out"), (args.overlay, "image", "--overlay")],
                                 inputs=[args.model, args.image])
    if overlay is not None or args.colormap != "inferno":
        check_colormap(args.colormap)
    bundle = _load(args)
    target = args.target
    if target is not None and target.lstrip("-").isdigit() and target not in bundle.classes:
        target = int(target)
    image = _image(args.image)
    layer = args.layer[0] if args.layer and len(args.layer) == 1 else args.layer
    result = explain(bundle, image, method=args.method, target=target, layer=layer, shifts=args.shifts,
                     smooth=args.smooth, fusion=args.fusion, precision=args.precision)
    maps = result if isinstance(result, list) else [result]
    if len(maps) > 1:  # several classes: one brightness scale for all of them
        maps = scale_heatmaps(maps, args.scale)
    meta = {"method": maps[0].method, "layer": maps[0].layer, "fusion": args.fusion if len(maps[0].layers) > 1 else None,
            "shifts": maps[0].shifts, "smooth": maps[0].smooth, "signed": maps[0].signed,
            "targets": [h.target for h in maps], "scores": [h.score for h in maps], "image": str(args.image)}
    if len(maps) > 1:
        meta["scale"] = args.scale
    data = maps[0].data if len(maps) == 1 else np.stack([h.data for h in maps])
    files = [(out, tiff_writer(data, **{"napari_gradcam": json.dumps(meta)}))]
    if overlay is not None:
        files.append((overlay, image_writer(_explain_overlay(image, maps, args), overlay)))
    atomic_write_many(files)  # all or nothing: a failure leaves every previous file as it was
    probs = maps[0].probabilities
    top = int(np.argmax(probs))
    print(f"predicted {bundle.classes[top]} ({probs[top]:.3f}); "
          + "; ".join(f"{h.method} for {h.target} (p={h.score:.3f}) at layer {h.layer}" for h in maps))
    what = "heatmap" if len(maps) == 1 else f"{len(maps)} heatmaps (one page per class, scale: {args.scale})"
    print(f"{what} written to {shown(out)}")
    if overlay is not None:
        kind = ("overlay" if len(maps) == 1 else f"overlay of {len(maps)} classes (each pixel in the colour of its "
                "strongest class, legend below)")
        print(f"{kind} written to {shown(overlay)}")
    return 0


def _explain_overlay(image, maps, args):
    """(H, W, 3) uint8: the map in ``--colormap`` for one class (signed maps on a diverging one); for
    several, each pixel in the colour of its strongest class, with a legend (class colours of
    :mod:`napari_gradcam.colours`)."""
    import numpy as np

    from ..colours import class_colour
    from ..engine import method_title
    from ._legend import add_legend

    if len(maps) == 1 and maps[0].signed:  # [-1, 1] on a diverging colormap (red: for the class, blue: against)
        return overlay_rgb(image, (maps[0].data + 1) / 2, "RdBu_r" if args.colormap == "inferno" else args.colormap,
                           args.alpha)
    if len(maps) == 1:
        return overlay_rgb(image, maps[0].data, args.colormap, args.alpha)
    # several classes: each pixel in the colour of the class with the most (positive) evidence
    rgb = classes_overlay_rgb(image, np.stack([np.clip(h.data, 0, 1) for h in maps]), min(1.0, 1.2 * args.alpha),
                              [h.target_index for h in maps])
    entries = [(f"{h.target} {100 * h.score:.1f} %", class_colour(h.target_index)) for h in maps]
    return add_legend(rgb, entries, title=f"{method_title(maps[0].method)}, scale: {args.scale}")


def register(sub) -> None:
    """Add ``explain`` to the subparsers ``sub``."""
    from ..engine.methods import method_names

    p = sub.add_parser(
        "explain", help="heatmap of why the model decided (CAM family, pixel attributions: see 'methods')",
        description="Explain MODEL's decision on IMAGE. Writes the heatmap at the image's own size as a float32 "
                    "TIFF in [0, 1] ([-1, 1] for signed pixel attributions; a stack of one map per class with "
                    "--target all, on the --scale they share), and with --overlay a PNG of the image in gray with "
                    "the colormapped heatmap on top (with several classes: each pixel in its strongest class's "
                    "colour, and a legend). It prints what it wrote.",
        epilog=f"""examples:
  {PROG} explain m.safetensors scan.png --method gradcam --out heat.tif --overlay heat.png
  {PROG} explain m.safetensors scan.png --method cam --target PNEUMONIA --out cam.tif
  {PROG} explain m.safetensors scan.png --method gradcam++ --layer features.block3 --out heat.tif
  {PROG} explain m.safetensors scan.png --shifts 4 --out fine.tif
  {PROG} explain m.safetensors scan.png --target all --scale probability --out all.tif --overlay all.png
  {PROG} explain m.safetensors scan.png --method layercam --layer fine --out small.tif    # small findings
  {PROG} explain m.safetensors scan.png --method layercam --layer features.block2 features.block3 --out fused.tif
  {PROG} explain m.safetensors scan.png --method gradcam --smooth aug eigen --out smooth.tif
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, TIFF, ...), or a folder: one heatmap "
                                                  "TIFF per image (the predicted class's, batched) under --out DIR")
    p.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                   help="any method of 'napari-gradcam methods' (%(choices)s); cam needs a global-pooling head; "
                        "layercam-fine fuses the last three stages (best for small findings); pixel attributions "
                        "(saliency, integrated-gradients, ...) keep their sign")
    p.add_argument("--out", required=True, metavar="HEAT.tif", help="heatmap as float32 TIFF")
    p.add_argument("--overlay", metavar="OVERLAY.png", help="also write image + heatmap as PNG")
    p.add_argument("--layer", nargs="+", metavar="NAME",
                   help="layer(s) to explain; several are fused (LayerCAM-style); 'fine': the last three resolution "
                        "stages; default the method's own or the model's target layer")
    p.add_argument("--fusion", default="mean", choices=("mean", "max"),
                   help="how the maps of several layers combine: mean (pytorch-grad-cam's) or max (LayerCAM's)")
    p.add_argument("--smooth", nargs="+", choices=("aug", "eigen"),
                   help="aug: average over flips and intensity scales (6 views); eigen: first principal component "
                        "of the weighted activations (gradient CAM family)")
    p.add_argument("--target", metavar="CLASS", help="class name or index to explain, or 'all'; default the predicted class")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="Score-CAM's passes: auto screens them in bfloat16 where the CPU/GPU computes it natively and "
                        "recomputes in float32 what the map needs (estimated error < 1/256 of its peak); float32: all")
    add_shifts(p)
    p.add_argument("--colormap", default="inferno", help="matplotlib colormap of the overlay (inferno, turbo, jet, ...)")
    p.add_argument("--scale", default="probability", choices=("probability", "shared", "each"),
                   help="how the maps of several classes (--target all) share one brightness scale: "
                        "'probability': each map times its class probability (a class with p = 0 is dark); "
                        "'shared': raw map values on one scale; 'each': each map to its own maximum")
    p.add_argument("--alpha", type=fraction, default=0.5, metavar="A", help="overlay opacity of the heatmap, 0-1")
    add_device(p)
    add_model_options(p)
    p.set_defaults(func=cmd_explain)
