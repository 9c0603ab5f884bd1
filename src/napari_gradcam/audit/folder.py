"""``napari-gradcam explain MODEL FOLDER --out DIR``: one heatmap file per image through the audit's
batched pass (many images per forward/backward pass)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .maps import PassSettings, process_batch
from .sources import open_source

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def heatmap_name(rel: str | None, key: str) -> str:
    """The heatmap file of an image: its relative path with ``.tif`` (``array_<i>.tif`` for arrays)."""
    base = rel if rel is not None else key.replace(":", "_")
    return str(Path(base).with_suffix(".tif"))


def iter_explain_folder(bundle: "ModelBundle", folder, out, method: str = "gradcam", layer=None,
                        batch_size: int = 32) -> Iterator[tuple[int, int]]:
    """Write ``out/<relative path>.tif`` (float32 (H, W) in [0, 1], the predicted class's map at the image's
    size, divided by its peak) for every image of ``folder``; yields (done, total).  Returns the list of
    (path, reason) of the images that could not be explained."""
    import torch

    from ..engine.layer_choice import resolve_layers
    from ..engine.methods import get_method
    from ..outputs import atomic_write, tiff_writer
    from ..preprocess import resize_maps

    spec = get_method(method)
    layers = tuple(resolve_layers(bundle, spec, layer))
    src = open_source(folder, bundle.classes)
    settings = PassSettings(spec.name, layers)
    skipped = list(src.skipped)
    yield 0, len(src)
    for lo in range(0, len(src), batch_size):
        r = process_batch(bundle, src, np.arange(lo, min(lo + batch_size, len(src))), settings)
        for j, i in enumerate(r.indices):
            e = src.entries[int(i)]
            if r.status[j] != "ok":
                skipped.append((e.key, r.status[j]))
                continue
            m = torch.from_numpy(r.layer_maps[j, 0])
            m = m / m.max() if float(m.max()) > 0 else m
            full = resize_maps(m, tuple(int(v) for v in r.sizes[j])).clamp_(0, 1).numpy().astype(np.float32)
            top = int(np.argmax(r.probs[j]))
            meta = {"method": spec.name, "layer": "+".join(layers) or "input", "target": bundle.classes[top],
                    "score": float(r.probs[j, top]), "image": e.key}
            path = Path(out) / heatmap_name(e.rel, e.key)
            os.makedirs(path.parent, exist_ok=True)
            atomic_write(path, tiff_writer(full, napari_gradcam=json.dumps(meta)))
        yield min(lo + batch_size, len(src)), len(src)
    return skipped
