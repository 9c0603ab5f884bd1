"""napari-gradcam: see why an image classifier decided.

The public API is imported lazily so that ``import napari_gradcam`` (which napari
does while scanning plugins) loads neither torch nor napari::

    import napari_gradcam as ng
    b = ng.build_model("resnet18", classes=["NORMAL", "PNEUMONIA"], in_channels=1, input_size=224)
    p = ng.predict(b, image)                    # (n_classes,) probabilities
    h = ng.explain(b, image, method="gradcam")  # h.data (H, W) float32 in [0, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "build_model": "bundle",
    "save_model": "bundle",
    "load_model": "bundle",
    "wrap_model": "bundle",
    "list_methods": "engine",
    "ModelBundle": "bundle",
    "ModelConfig": "bundle",
    "resolve_device": "bundle",
    "list_architectures": "models",
    "predict": "inference",
    "explain": "engine",
    "explain_batch": "engine",
    "tiled_heatmaps": "engine",
    "feature_maps": "engine",
    "Heatmap": "engine",
    "TiledHeatmaps": "engine",
    "scale_heatmaps": "engine",
    "GradCamError": "errors",
    "ModelFileError": "errors",
    "ImageError": "errors",
    "LayerError": "errors",
    "DatasetError": "errors",
    "TrainingError": "errors",
    "use_model": "_napari.model_api",
    "ParameterError": "errors",
    "OutputError": "errors",
    "NumericalError": "errors",
    "ResourceError": "errors",
    "TimeBudgetError": "errors",
    "demo_model_path": "data",
    "GradCamWarning": "errors",
    "compare_methods": "compare",
    "MethodComparison": "compare",
    "unlearn": "unlearn.pclarc",
    "audit": "audit", "iter_audit": "audit", "Audit": "audit",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .compare import MethodComparison, compare_methods
    from .bundle import ModelBundle, ModelConfig, build_model, load_model, resolve_device, save_model, wrap_model
    from .errors import DatasetError, GradCamError, ImageError, LayerError, ModelFileError, TrainingError
    from ._napari.model_api import use_model
    from .engine import Heatmap, TiledHeatmaps, explain, explain_batch, feature_maps, list_methods, tiled_heatmaps
    from .errors import GradCamWarning, NumericalError, OutputError, ParameterError, ResourceError
    from .inference import predict
    from .models import list_architectures
