"""A legend strip under a PNG overlay: one coloured square and a label per class."""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: legend background and text colours (RGB 0-255)
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the small bitmap font
        return ImageFont.load_default()


def add_legend(rgb: np.ndarray, entries: Sequence[tuple[str, tuple[float, float, float]]],
               title: str = "") -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with a strip below it listing ``entries`` ((label, (r, g, b) in [0, 1])).

    The entries flow left to right and wrap; the strip (and the image, padded on the right with the
    legend's background) is at least as wide as the widest entry.  Returns (H + strip, W', 3) uint8.
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    size = int(np.clip(round(w / 45), 11, 28))
    font = _font(size)
    pad, box = size // 2, size
    items = ([(title, None)] if title else []) + list(entries)
    widths = [int(font.getlength(label)) + (box + pad if colour is not None else 0) for label, colour in items]
    width = max(w, max(widths) + 2 * pad)
    rows, x = [[]], pad
    for item, iw in zip(items, widths):
        if rows[-1] and x + iw > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((item, x))
        x += iw + 2 * pad
    line = box + pad
    strip = Image.new("RGB", (width, len(rows) * line + pad), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        y = pad // 2 + r * line
        for (label, colour), x in row:
            if colour is not None:
                fill = tuple(int(round(255 * c)) for c in colour)
                draw.rectangle([x, y + 1, x + box - 2, y + box - 1], fill=fill)
                x += box + pad
            draw.text((x, y), label, fill=TEXT, font=font)
    out = np.zeros((h + strip.height, width, 3), np.uint8)
    out[:h] = BACKGROUND
    out[:h, :w] = rgb[..., :3]
    out[h:] = np.asarray(strip)
    return out
