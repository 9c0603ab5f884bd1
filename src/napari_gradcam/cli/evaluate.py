"""``napari-gradcam evaluate`` and ``predict``: metrics on a labelled folder, probabilities per file."""

from __future__ import annotations

import sys
from pathlib import Path

from ._evaluate_stats import add_stats_options
from ._common import (
    PROG, GradCamError, _expand_paths, _fmt_kw, _image, _load, _tqdm, add_device, add_model_options, add_quiet,
    atomic_write, check_outputs, number_option, shown,
)


def cmd_evaluate(args) -> int:
    import numpy as np

    from ..decision import decision_threshold
    from ..metrics import format_report, plot_report, save_report
    from ._evaluate_stats import bootstrap_of, evaluate_extras, print_extras

    check_outputs([(args.json, "json", "--json"), (args.plot, "plot", "--plot"), (args.predictions, "csv", "--predictions")],
                  inputs=[args.model, args.data_dir, args.csv])
    bundle = _load(args)
    data, probs, y, failed = _predict_folder(args, bundle, args.data_dir, args.csv)
    threshold = decision_threshold(bundle)
    used = [it for it in data.items if it.path not in {p for p, _ in failed}]
    boot = bootstrap_of(args, data, used)
    report, extras = evaluate_extras(args, bundle, used, y, probs, threshold, boot,
                                     lambda folder: _predict_folder(args, bundle, folder, None))
    print(format_report(report))
    print_extras(report, extras)
    skipped = list(data.skipped) + failed
    if skipped:
        print(shown(f"{len(skipped)} file(s) skipped, e.g. {skipped[0][0]} ({skipped[0][1]})."), file=sys.stderr)
    if args.json:
        full = dict(report, model=str(args.model), data=str(args.data_dir),
                    skipped=[[str(p), r] for p, r in skipped], **extras)
        save_report(full, args.json)
    if args.plot:
        plot_report(report, y, probs, args.plot, bootstrap=boot[0])
    if args.predictions:
        _write_predictions(Path(args.predictions), [it.path for it in used],
                           probs, bundle.classes, labels=[bundle.classes[i] for i in np.asarray(y)], threshold=threshold)
    return 0


def _predict_folder(args, bundle, folder, csv):
    """(the scanned data, probabilities (N, K), labels (N,), failed files) of MODEL on ``folder``."""
    from ..data import scan_folder
    from ..errors import DatasetError
    from ..train import evaluate_model

    data = scan_folder(folder, csv=csv, group_pattern=args.group_pattern, classes=bundle.classes)
    if not data.items:
        bad = [f for files in data.unreadable_classes.values() for f in files]
        if bad:
            raise DatasetError(f"None of the {len(bad)} image file(s) of the model's classes in {folder} "
                               f"could be read (e.g. {bad[0][0].name}: {bad[0][1]}).")
        others = sorted({c for c in (_class_of(p, data.root) for p, _ in data.skipped) if c not in bundle.classes})
        names = bundle.classes if len(bundle.classes) <= 10 else f"({len(bundle.classes)} classes)"
        raise DatasetError(
            f"No readable images of the model's classes {names} were found in {folder}"
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
        raise DatasetError(f"None of the images in {folder} could be read.")
    return data, probs, y, failed


def _class_of(path: Path, root: Path) -> str:
    """The class folder of a file under ``root`` (its first folder), else its parent folder's name."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = ()
    return parts[0] if len(parts) > 1 else path.parent.name


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


# ----------------------------------------------------------------------------- predict
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
    """Add this module's command(s) to the subparsers ``sub``."""
    # evaluate
    p = sub.add_parser(
        "evaluate", help="accuracy, balanced accuracy, ROC AUC, sensitivity, specificity on a labelled folder",
        description="Evaluate MODEL on DATA_DIR (one subfolder per class, named like the model's classes). Prints "
                    "a table; --json writes the report (keys: accuracy, balanced_accuracy, roc_auc, sensitivity, "
                    "specificity, confusion_matrix, classes, and each figure's 95 %% bootstrap interval as "
                    "<key>_ci), --plot a PNG of the confusion matrix and ROC curves. --groups adds every figure "
                    "per subgroup, --external a second data set side by side (see docs/evaluation.md).",
        epilog=f"""examples:
  {PROG} evaluate pneumonia.safetensors chest_xray/test --json report.json --plot report.png
  {PROG} evaluate pneumonia.safetensors test/ --groups sites.csv --group-column site
  {PROG} evaluate pneumonia.safetensors val/ --external other_hospital/ --bootstrap 2000
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors model bundle")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder per class")
    p.add_argument("--json", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--plot", metavar="REPORT.png", help="write the confusion matrix and ROC curves as PNG")
    p.add_argument("--predictions", metavar="PRED.csv", help="also write per-image probabilities")
    p.add_argument("--csv", help="CSV of path,label rows instead of class subfolders")
    p.add_argument("--batch-size", type=number_option("batch_size"), default=64, metavar="N")
    add_stats_options(p)
    add_device(p)
    add_quiet(p)
    add_model_options(p)
    p.set_defaults(func=cmd_evaluate)

    # predict
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

