"""``napari-gradcam predict``: class probabilities per image file (CSV)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import (
    GradCamError, PROG, _expand_paths, _fmt_kw, _image, _load, _tqdm, add_device, add_model_options, add_quiet,
    atomic_write, check_outputs, number_option, shown,
)


def _prediction_rows(files, probs, classes, labels=None, threshold=None):
    """The header and one row per file of a predictions CSV (the predicted class at the model's threshold)."""
    from ..decision import predicted_classes

    yield ["path", *(["label"] if labels is not None else []), "predicted", *[f"p_{c}" for c in classes]]
    for k, (p, row, c) in enumerate(zip(files, probs, predicted_classes(probs, threshold))):
        yield [str(p), *([labels[k]] if labels is not None else []), classes[int(c)],
               *[f"{float(v):.6f}" for v in row]]


def _write_predictions(path: Path, files, probs, classes, labels=None, threshold=None) -> None:
    """The predictions CSV, written atomically (a failed write leaves the previous file)."""
    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(_prediction_rows(files, probs, classes, labels, threshold))

    atomic_write(path, write)


def cmd_predict(args) -> int:
    import numpy as np

    from ..decision import decision_threshold
    from ..errors import ImageError
    from ..inference import predict

    check_outputs([(args.csv, "csv", "--csv")], inputs=[args.model, *args.paths])
    bundle = _load(args)
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
        why = (skipped[-1][1] if skipped else "unreadable").rstrip(".")
        raise GradCamError(f"None of the {len(files)} file(s) could be read as an image "
                           f"({'' if len(files) == 1 else 'e.g. '}{why}).")
    probs = np.concatenate(rows)
    threshold = decision_threshold(bundle)
    if args.csv:
        _write_predictions(Path(args.csv), ok_files, probs, bundle.classes, threshold=threshold)
    else:
        import csv

        csv.writer(sys.stdout).writerows(_prediction_rows(ok_files, probs, bundle.classes, threshold=threshold))
    for p, why in skipped:
        print(f"skipped {shown(p)}: {shown(why)}", file=sys.stderr)
    if args.csv and not args.quiet:
        print(f"{len(ok_files)} prediction(s) written to {shown(args.csv)}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add ``predict`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "predict", help="class probabilities for image files or folders (CSV)",
        description="Classify image files and folders (searched recursively). Writes a CSV with columns path, "
                    "predicted, p_<class>... to --csv, or to standard output. Unreadable files are listed on stderr "
                    "and skipped. A two-class model trained by this package predicts its second class where that "
                    "class's probability reaches the decision threshold stored in the model (chosen on held-out "
                    "patients); other models take the most probable class.",
        epilog=f"""examples:
  {PROG} predict pneumonia.safetensors scans/ --csv predictions.csv
  {PROG} predict pneumonia.safetensors a.png b.jpg
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--csv", metavar="OUT.csv", help="where to write the probabilities (default: standard output)")
    p.add_argument("--batch-size", type=number_option("batch_size"), default=32, metavar="N")
    add_device(p)
    add_quiet(p)
    add_model_options(p)
    p.set_defaults(func=cmd_predict)
