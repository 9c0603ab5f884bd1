"""The explanation engine: CAM, Grad-CAM, Grad-CAM++, tiled heatmaps, feature maps (torch/numpy only)."""

from .api import explain, feature_maps
from .gradcam import METHOD_TITLES, canonical_method
from .result import FeatureMaps, Heatmap, TiledHeatmaps
from .tiling import iter_tiled_heatmaps, tiled_heatmaps

__all__ = [
    "explain", "feature_maps", "tiled_heatmaps", "iter_tiled_heatmaps", "Heatmap", "TiledHeatmaps",
    "FeatureMaps", "canonical_method", "METHOD_TITLES",
]
