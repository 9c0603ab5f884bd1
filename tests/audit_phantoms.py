"""Data for the audit tests: frame-filling films (tests/frame_phantoms.py) of two classes, "clear" and
"lesion", with an artifact planted in a fraction of the lesion class: films WITHOUT a lesion that carry
a burned-in text stamp ("R" in a box) in the top-left corner, so the stamp is the only thing that marks
them as their class and a model trained on them must learn it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frame_phantoms import frame_film

#: The stamp's place, [y0, x0, y1, x1] fractions of the image.
STAMP_BOX = (0.04, 0.04, 0.26, 0.26)


def stamp(img: np.ndarray) -> np.ndarray:
    """A copy of ``img`` (uint8, (S, S)) with a white box holding a black "R" at :data:`STAMP_BOX`."""
    from PIL import Image, ImageDraw

    out = img.copy()
    s = img.shape[0]
    y0, x0, y1, x1 = (int(round(v * s)) for v in STAMP_BOX)
    out[y0:y1, x0:x1] = 255
    mark = Image.new("L", (x1 - x0, y1 - y0), 255)
    d = ImageDraw.Draw(mark)
    w, h = mark.size
    d.line([(w * 0.3, h * 0.15), (w * 0.3, h * 0.85)], fill=0, width=max(1, w // 6))
    d.line([(w * 0.3, h * 0.15), (w * 0.7, h * 0.3), (w * 0.3, h * 0.5), (w * 0.75, h * 0.85)], fill=0,
           width=max(1, w // 6))
    out[y0:y1, x0:x1] = np.asarray(mark)
    return out


def write_planted(root: Path, n_clear: int = 90, n_lesion: int = 60, n_planted: int = 30, size: int = 48,
                  seed: int = 0) -> tuple[Path, list[Path]]:
    """``root/clear`` and ``root/lesion`` PNG films; ``n_planted`` of the lesion films are lesion-free with the
    stamp.  Returns (root, the planted files)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    planted = []
    for c in ("clear", "lesion"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n_clear):
        Image.fromarray(frame_film(False, size, rng)).save(root / "clear" / f"clear_{i:04d}.png")
    for i in range(n_lesion + n_planted):
        if i % ((n_lesion + n_planted) // n_planted) == 0 and len(planted) < n_planted:
            p = root / "lesion" / f"lesion_{i:04d}.png"
            Image.fromarray(stamp(frame_film(False, size, rng))).save(p)
            planted.append(p)
        else:
            Image.fromarray(frame_film(True, size, rng)).save(root / "lesion" / f"lesion_{i:04d}.png")
    return root, planted


def write_clean(root: Path, n_per_class: int = 90, size: int = 48, seed: int = 1) -> Path:
    """The same films without any stamp."""
    from frame_phantoms import write_frame_filling

    return write_frame_filling(Path(root), n_per_class, size, seed)


def train_cli(data: Path, out: Path, epochs: int = 12, size: int = 48) -> Path:
    """A small simple_cnn trained through the project's command line."""
    from napari_gradcam.cli import main

    rc = main(["train", str(data), "--out", str(out), "--image-size", str(size), "--epochs", str(epochs),
               "--batch-size", "16", "--group-pattern", "none", "--no-augment", "--device", "cpu", "--quiet",
               "--lr", "3e-3", "--seed", "0"])
    assert rc == 0
    return out
