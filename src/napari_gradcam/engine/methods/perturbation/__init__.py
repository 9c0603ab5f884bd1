"""The perturbation family: channel weights from how the class score reacts when the input or the layer
changes (no gradients).

* :mod:`.scorecam`: Score-CAM, whole (masks, passes, bfloat16 screening);
* :mod:`.ablation`: Ablation-CAM (the model's tail re-run on the ablated activation);
* :mod:`.passes`: what both share (the layer's own output hooked, batch sizes, weighted maps);
* :mod:`.model_cut`: running part of a model (the layers after a layer) and fast inference copies.

Importing the package registers both methods.
"""

from .scorecam import PRECISIONS, masked_scores, score_cam_maps  # noqa: I001 - registered first, listed first
from .ablation import ablated_scores, ablation_cam_maps
from .passes import _forward, layer_output

__all__ = ["PRECISIONS", "_forward", "ablated_scores", "ablation_cam_maps", "layer_output", "masked_scores",
           "score_cam_maps"]
