"""feature_maps(): the most active channels of one layer for one image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import GradCamError
from ..numerics import check_maps
from ..preprocess import bundle_tensor, check_image
from ..validate import check_bundle, check_int
from .hooks import StopForward, capture
from .layer_choice import bundle_target_layer, layer_names
from .result import FeatureMaps

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def feature_maps(bundle: "ModelBundle", image, layer=None, n: int = 36) -> FeatureMaps:
    """The ``n`` most active channels (highest mean activation) of ``layer`` for one image.

    ``layer`` is a dotted name or the module (default the model's target layer); token outputs of
    transformers are shown on their patch grid.

    Returns
    -------
    FeatureMaps with ``maps`` (n, h, w) float32 raw activations, most active first.
    """
    import torch

    check_bundle(bundle, "feature_maps")
    img = check_image(image)
    names = layer_names(bundle, layer) if layer not in (None, "") else [bundle_target_layer(bundle)]
    if len(names) != 1:
        raise GradCamError(f"Feature maps show one layer at a time, not {len(names)}.")
    layer = names[0]
    n = check_int(n, "The number of feature maps", 1)
    x = bundle_tensor(bundle, [img]).to(bundle.device)
    bundle.model.eval()
    with torch.inference_mode(), capture(bundle.model, layer, stop=True) as box:
        try:
            bundle.model(x)
        except StopForward:
            pass
    act = box.activation[0].float()
    check_maps(bundle, act, "feature", layer, x)
    scores = act.mean(dim=(1, 2))
    order = torch.argsort(scores, descending=True)[: min(n, act.shape[0])]
    return FeatureMaps(act[order].cpu().numpy(), order.cpu().numpy(), scores[order].cpu().numpy(), layer)
