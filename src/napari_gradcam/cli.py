"""``napari-gradcam``: train, evaluate, predict and explain from the command line.

Every command is a thin layer over the same core the napari plugin uses.  User errors (missing
files, empty data folders, unknown classes or layers) print one sentence and exit with code 2;
Ctrl-C prints "cancelled" and exits with 130.  Heavy libraries are imported inside the commands,
so ``napari-gradcam --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import GradCamError

PROG = "napari-gradcam"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (and exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; shows defaults that say something."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d not in (None, False, argparse.SUPPRESS) and "%(default)" not in text
                and action.option_strings and not isinstance(action, argparse._VersionAction)):
            text += " (default: %(default)s)"
        return text


def _fmt_kw() -> dict:
    return {"formatter_class": _Formatter}


# ----------------------------------------------------------------------------- helpers
def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _load(model: str, device: str = "auto"):
    from .bundle import load_model

    return load_model(model, device=device)


def _image(path: str):
    from .data import read_image
    from .preprocess import check_image

    return check_image(read_image(path))


def _write_tiff(path: Path, data, **meta) -> Path:
    import numpy as np
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(data, dtype=np.float32), photometric="minisblack", metadata=meta or None)
    return path


def overlay_rgb(image, heat, colormap: str = "inferno", alpha: float = 0.5):
    """Image in gray with a colormapped heatmap alpha-blended on top -> (H, W, 3) uint8.

    ``image`` is (H, W) or (H, W, 3|4) of any dtype (scaled by its own min/max), ``heat`` (H, W) in [0, 1].
    """
    import numpy as np
    from matplotlib import colormaps

    from .preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    if heat.shape != gray.shape:
        raise GradCamError(f"The heatmap's shape {heat.shape} differs from the image's {gray.shape}.")
    lut = colormaps[colormap](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    colored = lut[np.round(heat * 255).astype(np.uint8)]
    out = gray[..., None] * (1 - alpha) + colored * alpha
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def classes_overlay_rgb(image, heatmaps, alpha: float = 0.6):
    """Overlay of several class heatmaps (C, H, W): each pixel coloured by its strongest class (tab10),
    with opacity ``alpha`` times that class's heat -> (H, W, 3) uint8."""
    import numpy as np
    from matplotlib import colormaps

    from .preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    h = np.clip(np.asarray(heatmaps, dtype=np.float32), 0, 1)
    top = h.argmax(0)
    strength = h.max(0)
    colors = np.asarray(colormaps["tab10"].colors, dtype=np.float32)[: max(1, h.shape[0])]
    colors = colors[np.arange(h.shape[0]) % len(colors)]
    a = (alpha * strength)[..., None]
    out = gray[..., None] * (1 - a) + colors[top] * a
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _write_png(path: Path, rgb) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


def _expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files among ``paths`` and in the folders among them (recursively, links followed, each
    real file once), and what was passed over with the reason."""
    import os

    from .data import IMAGE_SUFFIXES, walk_files

    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    first: dict[str, Path] = {}  # real path -> the path it is listed under
    for p in map(Path, paths):
        if p.is_dir():
            found, passed = walk_files(p)
            skipped += passed
            found = [(f, r) for f, r in found if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            found = [(p, os.path.realpath(p))]
        else:
            why = "not a regular file" if p.exists() else ("a broken link" if p.is_symlink() else "not found")
            skipped.append((p, why))
            continue
        for f, real in found:
            if real in first:
                skipped.append((f, f"the same file as {first[real]}, listed once"))
            else:
                first[real] = f
                files.append(f)
    return files, skipped


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .train import TrainConfig, train

    data_dir = args.data_dir
    if not Path(data_dir).exists():
        raise GradCamError(f"No data folder at {data_dir}.")
    cfg = TrainConfig(
        data_dir=str(data_dir), out=str(args.out), csv=args.csv, classes=args.classes,
        group_pattern=args.group_pattern, val_fraction=args.val_fraction, arch=args.arch,
        in_channels=args.in_channels, image_size=args.image_size, pretrained=args.pretrained,
        freeze_epochs=args.freeze_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, class_weighting=args.class_weighting, augment=not args.no_augment,
        flips=args.flips, erase=args.erase, erase_grid=args.erase_grid, patience=(args.patience or None), monitor=args.monitor, amp=not args.no_amp,
        seed=args.seed, device=args.device, num_workers=args.workers, steps_per_epoch=args.steps_per_epoch,
        max_minutes=args.max_minutes, resume=args.resume,
    )
    gen = train(cfg)
    bar = None
    result = None
    quiet = args.quiet
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if ev.kind == "start":
                if not quiet:
                    print(ev.message, file=sys.stderr)
            elif ev.kind == "load" and not quiet:
                if bar is None:
                    bar = _tqdm(total=ev.n_batches, desc="reading images", unit="img", leave=False)
                bar.n = ev.batch
                bar.refresh()
                if ev.batch >= ev.n_batches:
                    bar.close()
                    bar = None
            elif ev.kind == "batch" and not quiet:
                if bar is None:
                    bar = _tqdm(total=ev.n_batches, desc=f"epoch {ev.epoch}/{ev.n_epochs}", unit="batch", leave=False)
                bar.update(ev.batch - bar.n)
                if ev.loss is not None:
                    bar.set_postfix(loss=f"{ev.loss:.4f}",
                                    img_s=f"{ev.images_per_s:.0f}" if ev.images_per_s else "?", refresh=False)
            elif ev.kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.message, file=sys.stderr)
            elif ev.kind in ("done", "stopped"):
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.message, file=sys.stderr)
    except BaseException:  # Ctrl-C or an error: close the bar so the message gets a line of its own
        gen.close()
        if bar is not None:
            bar.close()
        raise
    if result is not None and (result.best_path or result.last_path):
        print(result.best_path or result.last_path)
        if result.skipped and not quiet:
            print(f"{len(result.skipped)} file(s) were skipped, e.g. {result.skipped[0][0]} "
                  f"({result.skipped[0][1]}).", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    import numpy as np

    from .data import scan_folder
    from .errors import DatasetError
    from .metrics import classification_report, format_report, plot_report, save_report
    from .train import evaluate_model

    bundle = _load(args.model, args.device)
    data = scan_folder(args.data_dir, csv=args.csv, group_pattern=None, classes=bundle.classes)
    if not data.items:
        bad = [f for files in data.unreadable_classes.values() for f in files]
        if bad:
            raise DatasetError(f"None of the {len(bad)} image file(s) of the model's classes in {args.data_dir} "
                               f"could be read (e.g. {bad[0][0].name}: {bad[0][1]}).")
        others = sorted({c for c in (_class_of(p, data.root) for p, _ in data.skipped) if c not in bundle.classes})
        names = bundle.classes if len(bundle.classes) <= 10 else f"({len(bundle.classes)} classes)"
        raise DatasetError(
            f"No readable images of the model's classes {names} were found in {args.data_dir}"
            + (f" (it has {', '.join(others[:5])})." if others else ".")
        )
    bar = None if args.quiet else _tqdm(total=len(data), desc="evaluating", unit="img", leave=False)

    def progress(done, total):
        if bar is not None:
            bar.update(done - bar.n)

    probs, y, failed = evaluate_model(bundle, data, batch_size=args.batch_size, progress=progress)
    if bar is not None:
        bar.close()
    if len(y) == 0:
        raise DatasetError(f"None of the images in {args.data_dir} could be read.")
    report = classification_report(y, probs, bundle.classes)
    print(format_report(report))
    skipped = list(data.skipped) + failed
    if skipped:
        print(f"{len(skipped)} file(s) skipped, e.g. {skipped[0][0]} ({skipped[0][1]}).", file=sys.stderr)
    if args.json:
        full = dict(report, model=str(args.model), data=str(args.data_dir),
                    skipped=[[str(p), r] for p, r in skipped])
        save_report(full, args.json)
    if args.plot:
        plot_report(report, y, probs, args.plot)
    if args.predictions:
        _write_predictions(Path(args.predictions), [it.path for it in data.items if it.path not in {p for p, _ in failed}],
                           probs, bundle.classes, labels=[bundle.classes[i] for i in np.asarray(y)])
    return 0


def _class_of(path: Path, root: Path) -> str:
    """The class folder of a file under ``root`` (its first folder), else its parent folder's name."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = ()
    return parts[0] if len(parts) > 1 else path.parent.name


def _write_predictions(path: Path, files, probs, classes, labels=None) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["label"] if labels is not None else []), "predicted", *[f"p_{c}" for c in classes]])
        for k, (p, row) in enumerate(zip(files, probs)):
            w.writerow([str(p), *([labels[k]] if labels is not None else []), classes[int(row.argmax())],
                        *[f"{float(v):.6f}" for v in row]])


# ----------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    import numpy as np

    from .errors import ImageError
    from .inference import predict

    bundle = _load(args.model, args.device)
    files, skipped = _expand_paths(args.paths)
    if not files:
        raise GradCamError(f"No image files were found in {', '.join(args.paths)}"
                           + (f" ({skipped[0][0]}: {skipped[0][1]})." if skipped else "."))
    ok_files, rows = [], []
    bar = None if args.quiet else _tqdm(total=len(files), desc="predicting", unit="img", leave=False)
    for i in range(0, len(files), args.batch_size):
        imgs, names = [], []
        for f in files[i : i + args.batch_size]:
            try:
                imgs.append(_image(f))
                names.append(f)
            except ImageError as e:
                skipped.append((f, str(e)))
        if imgs:
            rows.append(predict(bundle, imgs, batch_size=args.batch_size))
            ok_files += names
        if bar is not None:
            bar.update(min(args.batch_size, len(files) - i))
    if bar is not None:
        bar.close()
    if not ok_files:
        raise GradCamError(f"None of the {len(files)} file(s) could be read as an image.")
    probs = np.concatenate(rows)
    if args.csv:
        _write_predictions(Path(args.csv), ok_files, probs, bundle.classes)
    else:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["path", "predicted", *[f"p_{c}" for c in bundle.classes]])
        for p, row in zip(ok_files, probs):
            w.writerow([str(p), bundle.classes[int(row.argmax())], *[f"{float(v):.6f}" for v in row]])
    for p, why in skipped:
        print(f"skipped {p}: {why}", file=sys.stderr)
    if args.csv and not args.quiet:
        print(f"{len(ok_files)} prediction(s) written to {args.csv}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- explain
def cmd_explain(args) -> int:
    import numpy as np

    from .explain import explain

    bundle = _load(args.model, args.device)
    image = _image(args.image)
    target = args.target
    if target is not None and target.lstrip("-").isdigit() and target not in bundle.classes:
        target = int(target)
    result = explain(bundle, image, method=args.method, target=target, layer=args.layer, shifts=args.shifts)
    maps = result if isinstance(result, list) else [result]
    out = Path(args.out)
    meta = {"method": maps[0].method, "layer": maps[0].layer, "shifts": maps[0].shifts, "targets": [h.target for h in maps],
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
            _write_png(p, overlay_rgb(image, h.data, args.colormap, args.alpha))
            print(f"overlay written to {p}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- tile
def cmd_tile(args) -> int:
    import numpy as np

    from .explain import iter_tiled_heatmaps

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
    from .localisation import localize_folder

    bar = None if args.quiet else _tqdm(desc="localising", unit="img", leave=False)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    report = localize_folder(args.model, args.images_dir, args.masks_dir, methods=args.method,
                             json_path=args.json, curves=args.curves, target=args.target, progress=progress,
                             device=args.device, tolerance=args.tolerance, level=args.level, shifts=args.shifts)
    if bar is not None:
        bar.close()
    print(report.table())
    return 0


def cmd_demo(args) -> int:
    from ._napari.demo import run_demo

    return int(run_demo(screenshot=args.screenshot) or 0)


# ----------------------------------------------------------------------------- parser
_EPILOG = f"""\
examples:
  {PROG} train chest_xray/train --out pneumonia.safetensors --image-size 128 --epochs 8
  {PROG} evaluate pneumonia.safetensors chest_xray/test --json report.json --plot report.png
  {PROG} predict pneumonia.safetensors scans/ more/scan1.png --csv predictions.csv
  {PROG} explain pneumonia.safetensors scan.png --method gradcam --out heat.tif --overlay heat.png
  {PROG} tile pneumonia.safetensors slide.tif --tile 224 --overlap 0.5 --out slide_heatmaps/
  {PROG} demo

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

    def add_device(p):
        p.add_argument("--device", default="auto", help="'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'")

    def add_quiet(p):
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")

    def add_shifts(p):
        p.add_argument("--shifts", type=int, default=1, metavar="K",
                       help="average the maps of K x K sub-cell shifts of the input: a K times finer heatmap "
                            "(K*K passes, batched; 1 = off, 4 is a good choice)")

    # train
    p = sub.add_parser(
        "train", help="train a classifier on a folder of class subfolders",
        description="Train a classifier on DATA_DIR (one subfolder of images per class, any format and size) and "
                    "write the best model (by validation metric) to --out, plus OUT.last.safetensors after every epoch. "
                    "Whole patients are held out for validation: the patient is read from file names with "
                    "--group-pattern (the Kermany chest X-ray names by default). Stop any time with Ctrl-C: the last "
                    "finished epoch's checkpoint stays; continue with --resume OUT.last.safetensors.",
        epilog=f"""examples:
  {PROG} train chest_xray/train --out pneumonia.safetensors
  {PROG} train chest_xray/train --out pneumonia.safetensors --arch resnet18 --image-size 224 --freeze-epochs 1
  {PROG} train chest_xray/train --out pneumonia.safetensors --resume pneumonia.last.safetensors --epochs 20
  {PROG} train photos/ --out m.safetensors --in-channels 3 --flips --group-pattern none
""", **_fmt_kw())
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder of images per class")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="where to write the best model")
    g = p.add_argument_group("data")
    g.add_argument("--csv", help="CSV of path,label[,group] rows instead of class subfolders (paths relative to DATA_DIR)")
    g.add_argument("--classes", nargs="+", metavar="CLASS", help="use only these classes, in this order")
    g.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="share of images held out for validation")
    g.add_argument("--group-pattern", default="auto", metavar="REGEX",
                   help="regex whose first group in the file name is the patient; 'auto': Kermany names "
                        "(person123_..., IM-0115-...); 'none': every file on its own")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="simple_cnn",
                   help="simple_cnn, alexnet, vgg16, vgg19, resnet18, resnet50, mobilenet_v2, densenet121, efficientnet_b0")
    g.add_argument("--image-size", type=int, default=224, metavar="N", help="network input size: images are resized to N x N (on a CPU, 64-128 trains in minutes)")
    g.add_argument("--in-channels", type=int, default=1, choices=(1, 3), help="1: grayscale, 3: RGB")
    g.add_argument("--pretrained", default="auto", metavar="auto|true|false|PATH",
                   help="ImageNet initialisation: 'auto' (when torchvision's weights file is in the cache), "
                        "'true', 'false' or a path to a weights file; never downloads")
    g.add_argument("--freeze-epochs", type=int, default=0, metavar="N", help="train only the head for the first N epochs")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="passes over the training images")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per optimisation step")
    g.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="peak learning rate")
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd"))
    g.add_argument("--weight-decay", type=float, default=1e-4, metavar="W", help="L2 penalty (decoupled for AdamW)")
    g.add_argument("--schedule", default="cosine", choices=("cosine", "step", "constant"), help="learning-rate schedule")
    g.add_argument("--warmup-epochs", type=float, default=0.0, metavar="E", help="linear learning-rate warm-up, in epochs")
    g.add_argument("--class-weighting", default="balanced", choices=("balanced", "sampler", "none"),
                   help="'balanced': loss weights inverse to class size; 'sampler': balanced sampling")
    g.add_argument("--no-augment", action="store_true",
                   help="switch off augmentation (small rotations, shifts, zoom, brightness/contrast)")
    g.add_argument("--flips", action="store_true", help="add random horizontal flips (off for chest X-rays)")
    g.add_argument("--erase", type=float, default=0.0, metavar="P",
                   help="hide-and-seek: hide each cell of a grid with probability P while training, so that "
                        "heatmaps cover all of the evidence (try 0.2-0.3)")
    g.add_argument("--erase-grid", type=int, default=4, metavar="N", help="hide-and-seek grid, N x N cells")
    g.add_argument("--patience", type=int, default=5, metavar="N",
                   help="early stopping after N epochs without improvement; 0: never")
    g.add_argument("--monitor", default="balanced_accuracy",
                   choices=("balanced_accuracy", "accuracy", "roc_auc", "val_loss"), help="validation metric for the best model")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N", help="cap batches per epoch (quick trials)")
    g.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="time budget: the learning-rate schedule follows the clock, and no epoch starts "
                        "that would end after M minutes")
    g = p.add_argument_group("run")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (weights, epoch count, optimizer)")
    g.add_argument("--seed", type=int, default=0, help="fixes the split, initialisation, batch order and augmentation")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading processes when images do not fit in memory")
    add_device(g)
    add_quiet(g)
    p.set_defaults(func=cmd_train)

    # evaluate
    p = sub.add_parser(
        "evaluate", help="accuracy, balanced accuracy, ROC AUC, sensitivity, specificity on a labelled folder",
        description="Evaluate MODEL on DATA_DIR (one subfolder per class, named like the model's classes). Prints "
                    "a table; --json writes the report (keys: accuracy, balanced_accuracy, roc_auc, sensitivity, "
                    "specificity, confusion_matrix, classes), --plot a PNG of the confusion matrix and ROC curves.",
        epilog=f"""examples:
  {PROG} evaluate pneumonia.safetensors chest_xray/test --json report.json --plot report.png
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder per class")
    p.add_argument("--json", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--plot", metavar="REPORT.png", help="write the confusion matrix and ROC curves as PNG")
    p.add_argument("--predictions", metavar="PRED.csv", help="also write per-image probabilities")
    p.add_argument("--csv", help="CSV of path,label rows instead of class subfolders")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_evaluate)

    # predict
    p = sub.add_parser(
        "predict", help="class probabilities for image files or folders (CSV)",
        description="Classify image files and folders (searched recursively). Writes a CSV with columns path, "
                    "predicted, p_<class>... to --csv, or to standard output. Unreadable files are listed on stderr "
                    "and skipped.",
        epilog=f"""examples:
  {PROG} predict pneumonia.safetensors scans/ --csv predictions.csv
  {PROG} predict pneumonia.safetensors a.png b.jpg
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--csv", metavar="OUT.csv", help="where to write the probabilities (default: standard output)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_predict)

    # explain
    p = sub.add_parser(
        "explain", help="heatmap of why the model decided (CAM, Grad-CAM, Grad-CAM++)",
        description="Explain MODEL's decision on IMAGE. Writes the heatmap at the image's own size as a float32 "
                    "TIFF in [0, 1] (a stack of one map per class with --target all), and with --overlay a PNG of "
                    "the image in gray with the colormapped heatmap on top.",
        epilog=f"""examples:
  {PROG} explain m.safetensors scan.png --method gradcam --out heat.tif --overlay heat.png
  {PROG} explain m.safetensors scan.png --method cam --target PNEUMONIA --out cam.tif
  {PROG} explain m.safetensors scan.png --method gradcam++ --layer features.block3 --out heat.tif
  {PROG} explain m.safetensors scan.png --shifts 4 --out fine.tif
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, TIFF, ...)")
    p.add_argument("--method", default="gradcam", choices=("cam", "gradcam", "gradcam++"),
                   help="cam: class activation map (models with a global-pooling head); gradcam: Grad-CAM "
                        "at --layer; gradcam++: Grad-CAM++ (sharper when several regions matter)")
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
    p.add_argument("--method", nargs="+", default=["cam", "gradcam", "gradcam++"],
                   choices=("cam", "gradcam", "gradcam++"), help="methods to score")
    p.add_argument("--json", metavar="OUT.json", help="write per-image scores and means as JSON")
    p.add_argument("--target", default="label", choices=("label", "predicted"),
                   help="explain the true class (from the class subfolder) or the predicted one")
    p.add_argument("--tolerance", type=int, default=15, metavar="PX",
                   help="pointing game also counts a maximum within PX pixels of the mask")
    p.add_argument("--level", type=float, default=0.5, metavar="F", help="fixed threshold, a fraction of the maximum")
    p.add_argument("--curves", action="store_true", help="also deletion/insertion curves and their AUC (slower)")
    add_shifts(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_localize)

    # demo
    p = sub.add_parser(
        "demo", help="open napari with a synthetic X-ray, the demo model and its heatmaps",
        description="Open napari with a synthetic chest X-ray, the bundled demo model and its Grad-CAM heatmap. "
                    "With --screenshot, save a screenshot of the window and exit.", **_fmt_kw())
    p.add_argument("--screenshot", metavar="FILE.png", help="save a screenshot and close")
    p.set_defaults(func=cmd_demo)
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
        return int(args.func(args) or 0)
    except GradCamError as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        _err(f"{e.strerror or 'cannot access'}: {e.filename}.")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
