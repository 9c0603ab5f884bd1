"""One colour per class, the same everywhere: napari layers, the CLI's overlays, their legends.

A class keeps its colour by its index in the model's classes (class 0 green, 1 magenta, 2 cyan, ...),
so a class looks the same whether it is shown alone, with the others, in the Explain or the Tiled
heatmaps widget, or in ``explain --target all --overlay`` and ``tile``'s ``overlay.png``.
Single hues: on a black background (additive blending in napari) each map is "black -> its colour".
"""

from __future__ import annotations

#: (name, (r, g, b) in [0, 1]) of class 0, 1, 2, ...; repeats after the last
CLASS_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("green", (0.0, 1.0, 0.0)),
    ("magenta", (1.0, 0.0, 1.0)),
    ("cyan", (0.0, 1.0, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)),
    ("orange", (1.0, 0.55, 0.0)),
    ("blue", (0.25, 0.45, 1.0)),
    ("red", (1.0, 0.15, 0.15)),
    ("purple", (0.65, 0.3, 1.0)),
    ("pink", (1.0, 0.55, 0.75)),
    ("white", (1.0, 1.0, 1.0)),
)


def class_colour(index: int) -> tuple[float, float, float]:
    """(r, g, b) in [0, 1] of the class with this index in the model's classes."""
    return CLASS_COLOURS[int(index) % len(CLASS_COLOURS)][1]


def class_colour_name(index: int) -> str:
    """The colour's name ("green") of the class with this index."""
    return CLASS_COLOURS[int(index) % len(CLASS_COLOURS)][0]
