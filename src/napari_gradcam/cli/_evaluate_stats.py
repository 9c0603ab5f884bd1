"""The statistics of ``napari-gradcam evaluate``: intervals, subgroups and an external data set.

Kept apart from the command's file so that the command reads as before: predict, report, write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ._common import int_type, seed_int


def add_bootstrap_options(p) -> None:
    """--bootstrap N and --seed (the 95 % interval of every figure)."""
    p.add_argument("--bootstrap", type=int_type(0, 100_000, name="--bootstrap"), default=1000, metavar="N",
                   help="resamples of the 95 %% bootstrap interval of every figure (0: no intervals); patients "
                        "(found in file names as for training's split) are resampled whole")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the resamples")


def add_stats_options(p) -> None:
    """The evaluate command's options for intervals, patients, subgroups and an external set."""
    g = p.add_argument_group("intervals, subgroups, external data")
    add_bootstrap_options(g)
    g.add_argument("--group-pattern", default="auto", metavar="REGEX",
                   help="regex whose first group in the file name is the patient, resampled whole (as for "
                        "training's split); 'auto': Kermany names; 'none': every image on its own")
    g.add_argument("--patients", metavar="CSV",
                   help="CSV naming files (path or file column) and their patient (patient column); default: "
                        "a manifest.csv with those columns in DATA_DIR or its parent")
    g.add_argument("--groups", metavar="CSV|AUDIT_DIR",
                   help="every figure per subgroup: a CSV column (--group-column), or an audit folder's clusters")
    g.add_argument("--group-column", metavar="NAME", help="the --groups CSV's column of subgroups")
    g.add_argument("--external", metavar="OTHER_DIR",
                   help="a second (external) labelled folder, reported side by side with the drop and the "
                        "decision threshold's effect on each set")


def bootstrap_of(args, data, used) -> "Any":
    """(the :class:`~napari_gradcam.stats.Bootstrap` of the images ``used``, by patient where the scan's
    groups or a patients table give them; where the patients came from)."""
    from ..stats import patient_bootstrap, patient_table

    table = args.patients or (patient_table(args.data_dir) if args.csv is None else None)
    return patient_bootstrap(used, args.bootstrap, args.seed, table)


def evaluate_extras(args, bundle, used, y, probs, threshold, boot_source,
                    predict_folder: Callable[[str], tuple]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the report with intervals, the extra JSON keys: ``subgroups``, ``external``, ``drop``, ``thresholds``)."""
    from ..stats import evaluate_items

    boot, source = boot_source
    report, samples, subgroups = evaluate_items(used, y, probs, bundle.classes, threshold, boot, source,
                                                args.groups, args.group_column)
    extras: dict[str, Any] = {}
    if subgroups is not None:
        extras["subgroups"] = subgroups
    if args.external:
        extras.update(_external(args, bundle, y, probs, threshold, report, samples, predict_folder))
    return report, extras


def _external(args, bundle, y, probs, threshold, report, samples, predict_folder) -> dict[str, Any]:
    from ..stats import compare_sets, evaluate_items, patient_bootstrap, patient_table, threshold_effects

    data, p_ext, y_ext, failed = predict_folder(args.external)
    used = [it for it in data.items if it.path not in {p for p, _ in failed}]
    boot, source = patient_bootstrap(used, args.bootstrap, args.seed + 1, args.patients or patient_table(args.external))
    ext, ext_samples, _ = evaluate_items(used, y_ext, p_ext, bundle.classes, threshold, boot, source)
    ext.update(data=str(args.external), skipped=[[str(p), r] for p, r in list(data.skipped) + failed])
    out: dict[str, Any] = {"external": ext, "drop": compare_sets(report, ext, samples, ext_samples)}
    if len(bundle.classes) == 2:
        out["thresholds"] = {"internal": threshold_effects(y, probs, threshold),
                             "external": threshold_effects(y_ext, p_ext, threshold)}
    return out


def print_extras(report: dict[str, Any], extras: dict[str, Any]) -> None:
    """The subgroup table and the internal vs external table, after the main report."""
    from ..errors import shown
    from ..stats import format_comparison, format_subgroups

    if "subgroups" in extras:
        s = extras["subgroups"]
        print(f"\nsubgroups ({shown(s['column'])} of {shown(Path(s['source']).name)}; "
              f"{s['images_without_group']} image(s) without one left out)")
        print(format_subgroups(s["groups"], report, s["column"]))
    if "external" in extras:
        print(f"\ninternal ({report['n']} images) vs external ({shown(extras['external']['data'])})")
        print(format_comparison(report, extras["external"], extras["drop"], extras.get("thresholds")))
