"""Localisation metrics: does a heatmap point at the lesion?

Given a heatmap (H, W) and a lesion mask (H, W) of the same image:

* **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", 2016/2018):
  a hit when the heatmap's maximum lies inside the mask.  ``tolerance`` (pixels) accepts a
  maximum within that Euclidean distance of the mask, which is the mask dilated by a disk of that
  radius (Zhang et al. use 15 px at 224 px; :func:`localize_folder` and the CLI scale a tolerance
  given at 224 px to each image's larger side, see :func:`scaled_tolerance`).  Tied maxima: the
  first in row-major order (``numpy.argmax``).  An all-zero (or all-negative) heatmap points nowhere: a miss.
* **Energy inside** (the "energy-based pointing game" of Score-CAM, Wang et al. 2020): the share of
  the heatmap's mass (negative values clipped to 0) inside the mask.  A heatmap that ignores the
  lesion scores about the mask's share of the image (:func:`mask_share`); ``energy_ratio`` =
  energy / share, so 1 is chance and higher is better.
* **IoU and Dice** of the heatmap thresholded at Otsu's level (``skimage.filters.threshold_otsu``,
  foreground = heatmap > threshold) and at a fixed fraction of its maximum
  (foreground = heatmap >= level * max; heatmaps from :func:`napari_gradcam.engine` have max 1).
* **Deletion and insertion** (Petsiuk et al., "RISE", 2018): the target's probability as the most
  relevant pixels (by heatmap rank) are removed (replaced by a baseline: the blurred image, its
  mean, or zero) or inserted (into the baseline image), over fractions 0..1, and the area under
  each curve (``sklearn.metrics.auc``).  A good map has a low deletion AUC and a high insertion AUC.

Everything takes numpy arrays and returns plain dicts and dataclasses.  :func:`evaluate_localisation`
runs all of it for several methods over many images (:func:`iter_evaluate_localisation` is the same
as a generator of ``(done, total)`` progress, for napari workers), and :func:`localize_folder` is the
whole job from a model file and two folders, as the CLI's ``localize`` command.

The package has one module per job: :mod:`.metrics` (heatmap vs mask), :mod:`.curves` (deletion /
insertion, which need the model), :mod:`.report` (results, JSON, tables), :mod:`.folders` (pairing
images with masks) and :mod:`.evaluate` (many images and methods; the ``localize`` job).
"""

from .curves import BASELINES, CURVE_KEYS, deletion_insertion
from .evaluate import evaluate_localisation, iter_evaluate_localisation, localize_folder
from .folders import MASK_SUFFIXES, PairedFiles, load_masks_folder, read_mask
from .metrics import (
    METRIC_KEYS,
    energy_inside,
    localisation_scores,
    mask_share,
    pointing_game,
    scaled_tolerance,
    threshold_scores,
)
from .report import LocalisationReport, LocalisationRow

__all__ = [
    "BASELINES",
    "CURVE_KEYS",
    "MASK_SUFFIXES",
    "pointing_game",
    "scaled_tolerance",
    "energy_inside",
    "mask_share",
    "threshold_scores",
    "localisation_scores",
    "deletion_insertion",
    "LocalisationRow",
    "LocalisationReport",
    "iter_evaluate_localisation",
    "evaluate_localisation",
    "PairedFiles",
    "load_masks_folder",
    "read_mask",
    "localize_folder",
    "METRIC_KEYS",
]
