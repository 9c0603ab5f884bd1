"""``napari-gradcam evaluate``: metrics on a labelled folder, with intervals, subgroups and an external set."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import (
    PROG, _fmt_kw, _load, _tqdm, add_device, add_model_options, add_quiet, check_outputs, number_option, shown,
)
from ._evaluate_stats import add_stats_options
from .predict import _write_predictions


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


def register(sub) -> None:
    """Add ``evaluate`` to the subparsers ``sub``."""
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
