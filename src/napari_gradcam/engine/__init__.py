"""The explanation engine: CAM family, tiled heatmaps, feature maps (torch/numpy only, no napari).

``methods`` is the registry; ``cam`` (CAM) and ``gradient`` (the gradient CAM family, one weight
function per method over the shared ``core``) register their methods at import.  ``hooks`` captures
layers, ``layout`` reads token and channels-last outputs as maps, ``layers`` resolves ``layer=``
(names, modules, lists, the "fine" preset), ``discover`` finds default layers and CAM heads from any
module, ``shifts`` and ``smooth`` average transformed copies, ``api`` and ``tiling`` are the entry points.

Named ``engine`` (not ``explain``) so that the public function ``napari_gradcam.explain`` and this
subpackage never share a name: every submodule imports in any order.
"""

from .api import explain, feature_maps
from .methods import canonical_method, get_method, list_methods, method_title
from .result import FeatureMaps, Heatmap, TiledHeatmaps
from .scaling import scale_heatmaps
from .tiling import iter_tiled_heatmaps, tiled_heatmaps

__all__ = [
    "explain", "feature_maps", "tiled_heatmaps", "iter_tiled_heatmaps", "Heatmap", "TiledHeatmaps",
    "FeatureMaps", "canonical_method", "get_method", "list_methods", "method_title",
    "scale_heatmaps",
]
