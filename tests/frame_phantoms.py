"""Frame-filling synthetic films for training tests: the body fills the whole frame (no dark border),
bright markers sit near the edges, and the "lesion" class has a textured opacity inside one lung.

Unlike the demo phantoms (:mod:`napari_gradcam.phantoms`), whose dark surroundings hide it, these films
show what an augmentation that fills uncovered borders with zeros does: the augmented training images
are darker than every real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

CLASSES = ("clear", "lesion")


def frame_film(lesion: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint8 film; a lesion (if asked) lies inside one of the two lungs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.05 * rng.standard_normal() + 0.12 * (yy - 0.5) + 0.05 * (xx - 0.5) * rng.standard_normal()
    img = img + ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16) * 0.6
    lungs = []
    for side in (-1, 1):
        cx, cy = 0.5 + side * (0.2 + 0.02 * rng.standard_normal()), 0.5 + 0.03 * rng.standard_normal()
        rx, ry = 0.13 + 0.01 * rng.standard_normal(), 0.28 + 0.02 * rng.standard_normal()
        lung = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img = img - 0.3 * ndimage.gaussian_filter(lung.astype(float), 1.0)
        lungs.append((lung, cx, cy, rx, ry))
    if lesion:
        lung, cx, cy, rx, ry = lungs[rng.integers(2)]
        lx, ly = cx + 0.4 * rx * rng.uniform(-1, 1), cy + 0.5 * ry * rng.uniform(-1, 1)
        r = rng.uniform(0.06, 0.09)
        blob = ((xx - lx) ** 2 + (yy - ly) ** 2 < r**2) & lung
        texture = 0.18 + 0.12 * rng.standard_normal((size, size))
        img = img + ndimage.gaussian_filter(blob * texture, 0.7)
    for _ in range(2):  # bright markers (side letters, wires) near the edges
        h, w = rng.integers(max(2, size // 16), max(3, size // 8), size=2)
        y0 = rng.choice([rng.integers(1, size // 8), rng.integers(size - size // 8 - h, size - h)])
        x0 = rng.integers(1, size - w - 1)
        img[y0 : y0 + h, x0 : x0 + w] = 1.0
    img = img + 0.02 * rng.standard_normal((size, size))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_frame_filling(root: Path, n_per_class: int, size: int = 64, seed: int = 0) -> Path:
    """``root/clear/*.png`` and ``root/lesion/*.png``, ``n_per_class`` each; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(frame_film(c == "lesion", size, rng)).save(root / c / f"{c}_{i:04d}.png")
    return root
