"""The explanation engine: CAM, Grad-CAM, Grad-CAM++, tiled heatmaps, feature maps (torch/numpy only)."""

import sys
import types

from .api import explain, feature_maps
from .gradcam import METHOD_TITLES, canonical_method
from .result import FeatureMaps, Heatmap, TiledHeatmaps
from .tiling import iter_tiled_heatmaps, tiled_heatmaps

__all__ = [
    "explain", "feature_maps", "tiled_heatmaps", "iter_tiled_heatmaps", "Heatmap", "TiledHeatmaps",
    "FeatureMaps", "canonical_method", "METHOD_TITLES",
]


class _CallableModule(types.ModuleType):
    """Importing this subpackage makes ``napari_gradcam.explain`` the module (Python sets the parent
    package's attribute), which would hide the public function ``ng.explain``: calling the module
    calls the function, so ``ng.explain(bundle, image)`` works whichever of the two it is."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
