"""Class probabilities for images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .preprocess import bundle_tensor, split_batch

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import ModelBundle


def predict(bundle: "ModelBundle", image, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (softmax of the logits).

    Parameters
    ----------
    bundle : ModelBundle
    image : array-like
        One image, (H, W) or (H, W, 3|4), any dtype; or a batch: a list of images,
        (N, H, W) or (N, H, W, 3|4).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    np.ndarray
        (n_classes,) float32 for one image, (N, n_classes) for a batch; rows sum to 1.
    """
    import torch

    images, is_batch = split_batch(image)
    device = bundle.device
    out = []
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = bundle_tensor(bundle, images[i : i + batch_size]).to(device)
            out.append(torch.softmax(bundle.model(x).float(), dim=1).cpu())
    probs = torch.cat(out).numpy()
    return probs if is_batch else probs[0]
