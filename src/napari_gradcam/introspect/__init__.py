"""The model-introspection floor: what a model's modules are, from the module itself.

Below both :mod:`napari_gradcam.models` (building by name) and :mod:`napari_gradcam.engine` (explaining);
it imports nothing of the package but :mod:`napari_gradcam.errors`, and neither of them imports the
other's insides to learn about a model.

* :mod:`.modules`: submodules by dotted name; the first convolution and the head, found and swapped.
* :mod:`.layout`: a layer's output (maps, tokens, channels-last) read as (B, K, h, w).
* :mod:`.probe`: the one probing pass (every module hooked, one random image) and its cached map.
* :mod:`.discover`: the default layer, the resolution stages, the CAM head, the spatial layers.
"""

from .discover import CamHead, cam_features, default_target_layer, find_cam_head, spatial_layers, stage_outputs
from .layout import Layout, layout_of, to_spatial
from .modules import adapt_first_conv, first_conv_name, get_module, head_name, replace_head, set_module

__all__ = [
    "CamHead", "Layout", "adapt_first_conv", "cam_features", "default_target_layer", "find_cam_head", "first_conv_name",
    "get_module", "head_name", "layout_of", "replace_head", "set_module", "spatial_layers", "stage_outputs",
    "to_spatial",
]
