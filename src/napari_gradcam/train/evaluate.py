"""Probabilities of a trained bundle on a labelled data set, through the inference preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..data import ImageFolderData

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def evaluate_model(
    bundle: "ModelBundle",
    data: ImageFolderData,
    batch_size: int = 64,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """Probabilities of a bundle on every image of ``data``, with the same preprocessing as training.

    Returns (probs (N, n_classes) float32, labels (N,) int64, failed [(path, reason)]); images that
    fail to decode are dropped from both arrays.
    """
    import torch

    from ..data import read_image
    from ..errors import ImageError
    from ..numerics import check_logits
    from ..preprocess import bundle_tensor, check_image

    probs, labels, failed = [], [], []
    items = data.items
    model = bundle.model
    model.eval()
    n = len(items)
    for i in range(0, n, batch_size):
        imgs, ys = [], []
        for it in items[i : i + batch_size]:
            try:
                imgs.append(check_image(read_image(it.path)))
                ys.append(it.label)
            except ImageError as e:
                failed.append((it.path, str(e)))
        if imgs:
            with torch.inference_mode():
                x = bundle_tensor(bundle, imgs).to(bundle.device)
                logits = model(x).float()
                check_logits(bundle, logits, x, what=f"images {i}..{i + len(imgs) - 1} of {data.root}")
                probs.append(torch.softmax(logits, 1).cpu().numpy())
            labels.extend(ys)
        if progress is not None:
            progress(min(n, i + batch_size), n)
    p = np.concatenate(probs) if probs else np.zeros((0, bundle.n_classes), np.float32)
    return p, np.asarray(labels, dtype=np.int64), failed
