"""The explanation engine: CAM family, pixel attributions, tiled heatmaps, feature maps (torch/numpy only,
no napari).

* :mod:`.methods`: the registry and the method families (CAM; the gradient family; the perturbation
  family with Score-CAM; pixel attributions), each family's helpers beside it;
* :mod:`.pipeline`: ``explain`` as a short pipeline of named steps; :mod:`.features`: ``feature_maps``;
* :mod:`.layer_choice`: what ``layer=`` names (dotted names, modules, lists, the "fine" preset);
* :mod:`.hooks`: capturing layers during a pass; :mod:`.shifts`, :mod:`.smooth`: averaged transformed
  copies; :mod:`.scaling`: one brightness scale for several classes; :mod:`.result`: the results;
* :mod:`.tiling`: heatmaps over large images (plan and budget, network, blend, run, lazy, fullconv).

What a model's layers are (default layer, stages, CAM head, layouts) comes from
:mod:`napari_gradcam.introspect`, below the engine.  Named ``engine`` (not ``explain``) so that the
public function ``napari_gradcam.explain`` and this subpackage never share a name.
"""

from .features import feature_maps
from .methods import applicable_layer, canonical_method, get_method, list_methods, method_title
from .pipeline import explain, explain_batch
from .result import FeatureMaps, Heatmap, TiledHeatmaps
from .scaling import scale_heatmaps
from .tiling import iter_tiled_heatmaps, tiled_heatmaps

__all__ = [
    "explain", "explain_batch", "feature_maps", "tiled_heatmaps", "iter_tiled_heatmaps", "Heatmap", "TiledHeatmaps",
    "FeatureMaps", "applicable_layer", "canonical_method", "get_method", "list_methods", "method_title",
    "scale_heatmaps",
]
