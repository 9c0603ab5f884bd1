"""``napari-gradcam explain``, ``tile`` and ``localize``: heatmaps of one image, of a large image, and their scores against masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..engine.methods import method_names
from ._common import PROG, _fmt_kw, _load, _image, _write_tiff, overlay_rgb, classes_overlay_rgb, _write_png, _tqdm, add_device, add_quiet, add_shifts


def cmd_explain(args) -> int:
    import numpy as np

    from ..engine import explain

    bundle = _load(args.model, args.device)
    image = _image(args.image)
    target = args.target
    if target is not None and target.lstrip("-").isdigit() and target not in bundle.classes:
        target = int(target)
    result = explain(bundle, image, method=args.method, target=target, layer=args.layer, shifts=args.shifts)
    maps = result if isinstance(result, list) else [result]
    out = Path(args.out)
    meta = {"method": maps[0].method, "layer": maps[0].layer, "shifts": maps[0].shifts, "signed": maps[0].signed, "targets": [h.target for h in maps],
            "scores": [h.score for h in maps], "image": str(args.image)}
    data = maps[0].data if len(maps) == 1 else np.stack([h.data for h in maps])
    _write_tiff(out, data, **{"napari_gradcam": json.dumps(meta)})
    probs = maps[0].probabilities
    top = int(np.argmax(probs))
    print(f"predicted {bundle.classes[top]} ({probs[top]:.3f}); "
          + "; ".join(f"{h.method} for {h.target} (p={h.score:.3f}) at layer {h.layer}" for h in maps))
    print(f"heatmap written to {out}", file=sys.stderr)
    if args.overlay:
        ov = Path(args.overlay)
        for h in maps:
            p = ov if len(maps) == 1 else ov.with_name(f"{ov.stem}_{h.target}{ov.suffix or '.png'}")
            heat, cmap = (h.data, args.colormap) if not h.signed else (  # signed: [-1, 1] on a diverging map
                (h.data + 1) / 2, "RdBu_r" if args.colormap == "inferno" else args.colormap)
            _write_png(p, overlay_rgb(image, heat, cmap, args.alpha))
            print(f"overlay written to {p}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- tile
def cmd_tile(args) -> int:
    import numpy as np

    from ..engine import iter_tiled_heatmaps

    bundle = _load(args.model, args.device)
    image = _image(args.image)
    classes = None
    if args.classes:
        classes = int(args.classes[0]) if len(args.classes) == 1 and args.classes[0].isdigit() else args.classes
    gen = iter_tiled_heatmaps(bundle, image, tile=args.tile, overlap=args.overlap, classes=classes,
                              method=args.method, batch_size=args.batch_size, mode=args.mode)
    bar = None
    try:
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                res = stop.value
                break
            if not args.quiet:
                if bar is None:
                    bar = _tqdm(total=total, desc="tiles", unit="tile", leave=False)
                bar.update(done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heat = np.asarray(res.heatmaps, dtype=np.float32)
    files = []
    for k, c in enumerate(res.classes):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in c)
        files.append(_write_tiff(out / f"heatmap_{safe}.tif", heat[k], method=res.method, cls=c).name)
    info = {
        "image": str(args.image), "shape": list(heat.shape[1:]), "classes": res.classes,
        "breakdown": res.breakdown, "probabilities": res.probabilities, "tiles": res.tiles, "tile": res.tile,
        "stride": res.stride, "method": res.method, "mode": res.mode, "heatmaps": files,
    }
    (out / "breakdown.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    step = max(1, int(np.ceil(max(heat.shape[1:]) / 4096)))  # keep the PNG at most ~4096 px
    _write_png(out / "overlay.png", classes_overlay_rgb(image[::step, ::step], heat[:, ::step, ::step]))
    print("class breakdown (share of the image where the class dominates):")
    w = max(len(c) for c in res.classes) + 2
    for c in res.classes:
        print(f"  {c:<{w}} {100 * res.breakdown[c]:5.1f} %   mean probability {res.probabilities[c]:.3f}")
    if not args.quiet:
        print(f"{len(files)} heatmap(s), breakdown.json and overlay.png written to {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_localize(args) -> int:
    from ..localisation import localize_folder

    bar = None if args.quiet else _tqdm(desc="localising", unit="img", leave=False)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    report = localize_folder(args.model, args.images_dir, args.masks_dir, methods=args.method,
                             json_path=args.json, curves=args.curves, target=args.target, progress=progress,
                             device=args.device, tolerance=args.tolerance, level=args.level, shifts=args.shifts,
                             tolerance_at=args.tolerance_at or None)
    if bar is not None:
        bar.close()
    print(report.table())
    return 0


def register(sub) -> None:
    """Add this module's command(s) to the subparsers ``sub``."""
    # explain
    p = sub.add_parser(
        "explain", help="heatmap of why the model decided (any method of `napari-gradcam methods`)",
        description="Explain MODEL's decision on IMAGE. Writes the heatmap at the image's own size as a float32 "
                    "TIFF in [0, 1] ([-1, 1] for signed pixel attributions) (a stack of one map per class with --target all), and with --overlay a PNG of "
                    "the image in gray with the colormapped heatmap on top.",
        epilog=f"""examples:
  {PROG} explain m.safetensors scan.png --method gradcam --out heat.tif --overlay heat.png
  {PROG} explain m.safetensors scan.png --method cam --target PNEUMONIA --out cam.tif
  {PROG} explain m.safetensors scan.png --method gradcam++ --layer features.block3 --out heat.tif
  {PROG} explain m.safetensors scan.png --shifts 4 --out fine.tif
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, TIFF, ...)")
    p.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                   help="any of `napari-gradcam methods`: cam (models with a global-pooling head), gradcam "
                        "(Grad-CAM at --layer), gradcam++, scorecam, ablationcam, saliency, integrated-gradients, ...")
    p.add_argument("--out", required=True, metavar="HEAT.tif", help="heatmap as float32 TIFF")
    p.add_argument("--overlay", metavar="OVERLAY.png", help="also write image + heatmap as PNG")
    p.add_argument("--layer", metavar="NAME", help="layer to explain (Grad-CAM); default the model's target layer")
    p.add_argument("--target", metavar="CLASS", help="class name or index to explain, or 'all'; default the predicted class")
    add_shifts(p)
    p.add_argument("--colormap", default="inferno", help="matplotlib colormap of the overlay (inferno, turbo, jet, ...)")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A", help="overlay opacity of the heatmap")
    add_device(p)
    p.set_defaults(func=cmd_explain)

    # tile
    p = sub.add_parser(
        "tile", help="per-class heatmaps and class breakdown of a large image",
        description="Slide MODEL over a large IMAGE in overlapping tiles. Writes DIR/heatmap_<class>.tif (float32, "
                    "the image's size), DIR/breakdown.json (the share of the image where each class dominates, "
                    "mean probabilities) and DIR/overlay.png (each pixel coloured by its strongest class).",
        epilog=f"""examples:
  {PROG} tile m.safetensors mosaic.tif --tile 512 --overlap 0.5 --out mosaic_heatmaps/
  {PROG} tile m.safetensors slide.png --tile 256 --classes 2 --out top2/
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("image", metavar="IMAGE", help="a (large) image file")
    p.add_argument("--tile", type=int, default=None, metavar="N", help="tile size in image pixels (default: the model's input size)")
    p.add_argument("--overlap", type=float, default=0.5, metavar="F", help="fraction shared by neighbouring tiles, 0-0.95")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", default="cam", choices=("cam", "gradcam", "gradcam++"),
                   help="heatmap method per tile (cam is the fastest)")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="class names, or one number k for the top-k classes; default all")
    p.add_argument("--mode", default="tiles", choices=("tiles", "fullconv"),
                   help="'fullconv': one fully convolutional pass (CAM only; faster, approximate)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="tiles per forward pass")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_tile)

    # localize
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
    p.add_argument("--tolerance", type=float, default=15, metavar="PX",
                   help="pointing game also counts a maximum within PX pixels of the mask, PX given at "
                        "--tolerance-at pixels and scaled to each image's larger side")
    p.add_argument("--tolerance-at", type=float, default=224, metavar="SIZE",
                   help="image size at which --tolerance is given (Zhang et al.'s 15 px are at 224 px); "
                        "0: --tolerance is in each image's own pixels")
    p.add_argument("--level", type=float, default=0.5, metavar="F", help="fixed threshold, a fraction of the maximum")
    p.add_argument("--curves", action="store_true", help="also deletion/insertion curves and their AUC (slower)")
    add_shifts(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_localize)

