"""Statistics of evaluations: bootstrap intervals (by image or by patient), subgroup tables, two data sets.

* :mod:`.bootstrap`: resample weights from an index matrix of draws, percentile intervals, every
  classification figure of all resamples at once.
* :mod:`.grouping`: patients (file names, a manifest CSV) and subgroups (a CSV column, an audit's clusters).
* :mod:`.subgroups`: per-subgroup reports with intervals, counts and flags.
* :mod:`.shift`: internal vs external data set, the drop and the decision threshold's part.
* :mod:`.means`: intervals of per-image means (localisation), paired across methods.
* :mod:`.folder`: a model on a labelled folder with all of the above (the CLI's and the widget's core).

Nothing here imports torch, napari or Qt.
"""

from .bootstrap import (
    DEFAULT_RESAMPLES, Bootstrap, classification_intervals, classification_samples, percentile_interval,
    resample_weights, roc_auc_samples,
)
from .folder import evaluate_items, iter_evaluate_folder, patient_bootstrap
from .grouping import patient_table, read_column, resampling_units, table_groups
from .means import bootstrap_settings, image_units, mean_intervals
from .shift import balancing_threshold, compare_sets, format_comparison, threshold_effects
from .subgroups import below_whole, format_subgroups, report_with_intervals, subgroup_reports

__all__ = [
    "DEFAULT_RESAMPLES", "Bootstrap", "classification_intervals", "classification_samples", "percentile_interval",
    "resample_weights", "roc_auc_samples", "patient_table", "read_column", "resampling_units", "table_groups",
    "bootstrap_settings", "image_units", "mean_intervals", "balancing_threshold", "compare_sets",
    "format_comparison", "threshold_effects", "below_whole", "format_subgroups", "report_with_intervals",
    "subgroup_reports", "evaluate_items", "iter_evaluate_folder", "patient_bootstrap",
]
