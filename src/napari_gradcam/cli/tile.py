"""``napari-gradcam tile``: per-class heatmaps and the class breakdown of a large image (read lazily when large)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ._common import (
    PROG, drive, steps, _fmt_kw, _load, add_device, add_model_options, add_quiet, atomic_write_many, check_outputs,
    classes_overlay_rgb, dask_progress, fraction, image_writer, number_option, safe_file_names, shown, tiff_writer,
)


def _tile_files(out: Path, classes: list[str]) -> dict[str, Path]:
    """The files ``tile`` writes into ``out``: one heatmap per class (safe, unique names), the breakdown, the overlay."""
    files = {c: out / f"heatmap_{s}.tif" for c, s in zip(classes, safe_file_names(classes))}
    return {**files, "breakdown.json": out / "breakdown.json", "overlay.png": out / "overlay.png"}


def cmd_tile(args) -> int:
    import numpy as np

    from ..engine import iter_tiled_heatmaps
    from ..engine.tiling.budget import check_result_fits, check_whole_run
    from ..errors import TimeBudgetError

    (out,) = check_outputs([(args.out, "folder", "--out")], inputs=[args.model, args.image])
    bundle = _load(args)
    planned = _tile_files(out, bundle.classes)
    check_outputs([(p, "json" if p.suffix == ".json" else "image", "--out") for p in planned.values()],
                  inputs=[args.model, args.image])
    image = _large_image(args.image)
    classes = None
    if args.classes:
        classes = int(args.classes[0]) if len(args.classes) == 1 and args.classes[0].isdigit() else args.classes
    if isinstance(image, np.ndarray):  # a lazy image gives lazy results, written band by band
        check_result_fits(image.shape[:2], bundle.n_classes if classes is None or isinstance(classes, int) else len(classes))
    gen = iter_tiled_heatmaps(bundle, image, tile=args.tile, overlap=args.overlap, classes=classes,
                              method=args.method, batch_size=args.batch_size, mode=args.mode, force=args.force,
                              max_minutes=args.max_minutes)
    try:
        if not isinstance(image, np.ndarray) and args.mode == "tiles" and not args.force:
            # every chunk of a lazy result is computed below to be written: the whole run is costed now
            check_whole_run(bundle, image, args.tile, args.overlap, args.method, args.batch_size, args.max_minutes)
        with dask_progress(args.quiet):  # a lazy image's value-range pass: progress, never minutes of silence
            res = drive(gen, steps("tiles", "tile"), quiet=args.quiet)
    except TimeBudgetError as e:  # the same estimate, with the command line's remedy
        raise TimeBudgetError(f"{e.summary}; use a larger --tile or a smaller --overlap, or add --force to run "
                              "it anyway.", seconds=e.seconds, budget_seconds=e.budget_seconds, tiles=e.tiles,
                              summary=e.summary) from None
    with dask_progress(args.quiet):
        res = _write_tiled_outputs(res, image, out, planned, args.image)
    how = "each pixel counted once, by the nearest of the non-overlapping tiles" if res.mode == "tiles" else \
        "by a tile centred at each pixel"
    print(f"class breakdown (share of the image where the class dominates, {how}; tiles of {res.tile} px):")
    w = max(len(c) for c in res.classes) + 2
    for c in res.classes:
        print(f"  {c:<{w}} {100 * res.breakdown[c]:5.1f} %   mean probability {res.probabilities[c]:.3f}")
    if not args.quiet:
        print(f"{len(res.classes)} heatmap(s), breakdown.json and overlay.png written to {shown(out)}", file=sys.stderr)
    return 0


def _large_image(path: str):
    """A zarr store, or a TIFF too large to decode whole, as a lazy dask array (read block by block by
    the tiled engine); any other image read whole."""
    import dask.array as da
    import numpy as np

    from ..data import open_image_lazy

    p = Path(path)
    if p.suffix.lower() == ".zarr" or (p.is_dir() and any((p / n).exists() for n in (".zarray", "zarr.json"))):
        return _lazy_zarr(p)
    image = open_image_lazy(p)
    return image if isinstance(image, np.ndarray) else _checked_blocks(image, p.name)


class _CheckedReader:
    """A lazy array (zarr) whose unreadable blocks (a TIFF that declares more than it holds, a damaged
    chunk) raise one sentence naming the file, when the tiling reads them, instead of the reader's own
    exception."""

    def __init__(self, arr, name: str) -> None:
        import numpy as np

        self._arr, self._name = arr, name
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), len(arr.shape)

    def __getitem__(self, key):
        import numpy as np

        from ..errors import ImageError

        try:
            return np.asarray(self._arr[key])
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure is a problem of the user's file
            rows = key[0] if isinstance(key, tuple) and key and isinstance(key[0], slice) else None
            where = f" (rows {rows.start or 0}-{rows.stop})" if rows is not None else ""
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ImageError(f"A block of {shown(self._name)}{where} could not be read ({type(e).__name__}: "
                             f"{first}); the file may be damaged or declare more than it holds.") from None


def _checked_blocks(arr, name: str):
    """``arr`` (zarr) as a dask array of its own chunks, read through :class:`_CheckedReader`."""
    import dask.array as da

    chunks = getattr(arr, "chunks", None) or "auto"
    return da.from_array(_CheckedReader(arr, name), chunks=chunks, name=False)


def _lazy_zarr(path: Path):
    """A zarr array, or the first array of a zarr group (level 0 of an OME-Zarr pyramid), as dask."""
    import dask.array as da

    from ..errors import ImageError

    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{path.name} is not a readable zarr store ({type(e).__name__}).") from None
    if not hasattr(node, "shape"):  # a group: "0" (OME-Zarr), else its first array
        arrays = dict(node.arrays())
        if not arrays:
            raise ImageError(f"The zarr group {path.name} holds no array.")
        node = arrays.get("0", next(iter(arrays.values())))
    return _checked_blocks(node, path.name)


def _write_tiled_outputs(res, image, out: Path, planned: dict[str, Path], image_name: str):
    """heatmap_<class>.tif per class, breakdown.json and overlay.png (with a legend), all or nothing.

    A lazy result is computed once, into a temporary zarr store in ``out`` (with its breakdown in the
    same pass), then copied to TIFFs row band by row band: memory stays bounded by the bands, whatever
    the image size.  Returns the result with its breakdown computed.
    """
    import shutil

    import numpy as np

    tmp = None
    if res.lazy:
        tmp = out / f".heatmaps-{os.getpid()}.zarr"
        res = res.to_zarr(tmp, dtype="float32")
    try:
        heat = res.heatmaps if res.lazy else np.asarray(res.heatmaps, dtype=np.float32)
        files = []
        for k, c in enumerate(res.classes):
            if res.lazy:
                files.append((planned[c], lambda t, k=k, c=c: _write_tiff_bands(t, heat, k, method=res.method, cls=c)))
            else:
                files.append((planned[c], tiff_writer(heat[k], method=res.method, cls=c)))
        info = {
            "image": str(image_name), "shape": list(heat.shape[1:]), "classes": res.classes,
            "breakdown": res.breakdown, "probabilities": res.probabilities, "tiles": res.tiles, "tile": res.tile,
            "stride": res.stride, "method": res.method, "mode": res.mode,
            "heatmaps": [p.name for p, _ in files], "lazy": bool(res.lazy),
        }
        text = json.dumps(info, indent=2) + "\n"
        files.append((planned["breakdown.json"], lambda t: Path(t).write_text(text, encoding="utf-8")))
        step = max(1, int(np.ceil(max(heat.shape[1:]) / 4096)))  # keep the PNG at most ~4096 px
        small_image = np.asarray(image[::step, ::step])
        small_heat = np.asarray(heat[:, ::step, ::step], dtype=np.float32)
        rgb = _tiled_overlay(small_image, small_heat, res)
        files.append((planned["overlay.png"], image_writer(rgb, planned["overlay.png"])))
        atomic_write_many(files)  # the folder's previous results stay whole if any write fails
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def _tiled_overlay(image, heat, res):
    from ..colours import class_colour
    from ._legend import add_legend

    rgb = classes_overlay_rgb(image, heat, class_indices=res.class_indices)
    entries = [(f"{c} {100 * res.breakdown[c]:.1f} %", class_colour(i)) for c, i in zip(res.classes, res.class_indices)]
    return add_legend(rgb, entries, title="share of the image:")


def _write_tiff_bands(path: Path, heat, k: int, band: int = 256, **meta) -> Path:
    """Write ``heat[k]`` (a (C, H, W) array read on demand) as a tiled float32 TIFF, one band of rows at a time."""
    import numpy as np
    import tifffile

    _, H, W = heat.shape

    def tiles():
        for y in range(0, H, band):
            rows = np.asarray(heat[k, y:y + band], dtype=np.float32)
            for x in range(0, W, band):
                t = np.zeros((band, band), np.float32)
                part = rows[:, x:x + band]
                t[: part.shape[0], : part.shape[1]] = part
                yield t

    tifffile.imwrite(path, tiles(), shape=(H, W), dtype=np.float32, tile=(band, band), photometric="minisblack",
                     metadata=meta or None, bigtiff=H * W * 4 > 2**31)
    return path


def _cam_methods() -> list[str]:
    from ..engine.methods import method_names

    return method_names("cam")


def register(sub) -> None:
    """Add ``tile`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "tile", help="per-class heatmaps and class breakdown of a large image",
        description="Slide MODEL over a large IMAGE in overlapping tiles. Writes DIR/heatmap_<class>.tif (float32, "
                    "the image's size, blended smoothly from all tiles), DIR/breakdown.json (the share of the image "
                    "where each class dominates and mean probabilities, each pixel counted once, as the nearest of "
                    "the non-overlapping tiles calls it, at any overlap) and DIR/overlay.png (each pixel coloured by "
                    "its strongest "
                    "class, with a legend). TIFFs larger than memory and zarr stores are read lazily, block by block.",
        epilog=f"""examples:
  {PROG} tile m.safetensors mosaic.tif --tile 512 --overlap 0.5 --out mosaic_heatmaps/
  {PROG} tile m.safetensors slide.png --tile 256 --classes 2 --out top2/
  {PROG} tile m.safetensors slide.png --tile 32 --overlap 0.9 --out fine/ --force    # even if over --max-minutes
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("image", metavar="IMAGE", help="a (large) image file")
    p.add_argument("--tile", type=number_option("tile"), default=None, metavar="N",
                   help="tile size in image pixels (default: the scale the model was trained at, i.e. the typical "
                        "size of its training images, recorded in the bundle; else the model's input size)")
    p.add_argument("--overlap", type=number_option("overlap"), default=0.5, metavar="F",
                   help="fraction shared by neighbouring tiles, 0-0.95")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", default="cam", choices=_cam_methods(), metavar="METHOD",
                   help="CAM-family method per tile (%(choices)s; cam is the fastest)")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="class names, or one number k for the top-k classes; default all")
    p.add_argument("--mode", default="tiles", choices=("tiles", "fullconv"),
                   help="'fullconv': one fully convolutional pass (CAM only; faster, approximate)")
    p.add_argument("--batch-size", type=number_option("batch_size"), default=16, metavar="N",
                   help="tiles per forward pass")
    p.add_argument("--max-minutes", type=number_option("minutes"), default=None, metavar="M",
                   help="refuse a plan estimated (from one measured tile) to take longer than M minutes "
                        "(default 10; 0: no limit)")
    p.add_argument("--force", action="store_true", help="run even a plan estimated to exceed --max-minutes")
    add_device(p)
    add_quiet(p)
    add_model_options(p, classes_flag=False)
    p.set_defaults(func=cmd_tile)
