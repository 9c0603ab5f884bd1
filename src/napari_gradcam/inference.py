"""Class probabilities for images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .preprocess import batch_items, bundle_tensor, check_image

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import ModelBundle


def predict(bundle: "ModelBundle", image, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (softmax of the logits).

    Parameters
    ----------
    bundle : ModelBundle
    image : array-like
        One image, (H, W) or (H, W, 3|4), any dtype; or a batch: a list of images,
        (N, H, W) or (N, H, W, 3|4).  A lazy stack (dask, zarr) is read one batch at a time.
        An (H, W, C) array with a few channels other than 3|4, e.g. (512, 512, 2), is one image
        with channels that cannot be classified (ImageError), not a batch; pass a list for that.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    np.ndarray
        (n_classes,) float32 for one image, (N, n_classes) for a batch; rows sum to 1.
    """
    import torch

    from .numerics import check_logits
    from .validate import check_bundle, check_int

    check_bundle(bundle, "predict")
    batch_size = check_int(batch_size, "batch_size", 1)
    items, is_batch = batch_items(image)  # shapes and dtypes checked; lazy images not loaded yet
    device = bundle.device
    out = []
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(items), batch_size):
            x = bundle_tensor(bundle, [check_image(im) for im in items[i : i + batch_size]]).to(device)
            logits = bundle.model(x).float()
            check_logits(bundle, logits, x, what="this image" if not is_batch else f"images {i}..{i + len(x) - 1}")
            out.append(torch.softmax(logits, dim=1).cpu())
    probs = torch.cat(out).numpy()
    return probs if is_batch else probs[0]
