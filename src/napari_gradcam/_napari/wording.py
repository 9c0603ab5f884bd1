"""One vocabulary per surface: the core's messages name command-line options (``--arch``, ``--mean``);
in napari they name the fields of the plugin's forms instead.

:func:`napari_words` rewrites a message for napari: the known phrases that address command-line or
Python users become the form's words, and any other ``--option`` left becomes its field's label
(:data:`FLAG_FIELDS`), or a plain "the <option> setting".  Every notification of the plugin goes through
it (:mod:`.jobs`).
"""

from __future__ import annotations

import re

#: command-line option -> the label of the form field that sets the same thing (tab in brackets)
FLAG_FIELDS = {
    "--arch": "architecture (Model tab)",
    "--classes": "classes (Model tab)",
    "--mean": "mean (Model tab)",
    "--std": "std (Model tab)",
    "--in-channels": "channels (Model tab)",
    "--input-size": "input size (Model tab)",
    "--model": "model (Model tab)",
    "--device": "device",
    "--method": "method",
    "--target": "target",
    "--layer": "layer",
    "--shifts": "sub-cell shifts (Explain tab)",
    "--tile": "tile size (Tiled tab)",
    "--overlap": "overlap (Tiled tab)",
    "--classes-top": "classes (Tiled tab)",
    "--n": "channels shown (Features tab)",
    "--out": "save as (Train tab)",
    "--epochs": "epochs (Train tab)",
    "--batch-size": "batch size (Train tab)",
    "--lr": "learning rate (Train tab)",
    "--image-size": "image size (Train tab)",
    "--val-fraction": "validation share (Train tab)",
    "--class-weighting": "class weighting (Train tab)",
    "--no-augment": "augmentation (Train tab)",
}

#: whole phrases first: (pattern, replacement)
_PHRASES = (
    (re.compile(r"give --mean/--std, or mean=/std=,"), "set the Model tab's mean and std fields"),
    (re.compile(r"\(--arch and --classes on the command line\)"), "(the Model tab's architecture and classes fields)"),
    (re.compile(r"\(classes=\[\.\.\.\], or --classes on the command line\)"), "(the Model tab's classes field)"),
    (re.compile(r",?\s*(?:or\s+)?(--[a-z][a-z0-9-]*) on the command line"), lambda m: f", the {_field(m.group(1))} field"),
    (re.compile(r"\s*\(--json\)"), ""),
)
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _field(flag: str) -> str:
    return FLAG_FIELDS.get(flag, flag.lstrip("-").replace("-", " "))


def napari_words(message: str) -> str:
    """``message`` with command-line options replaced by the form fields that set the same thing.

    >>> napari_words("give the architecture and the class names (--arch and --classes on the command line).")
    "give the architecture and the class names (the Model tab's architecture and classes fields)."
    """
    text = str(message)
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    return _FLAG.sub(lambda m: f"'{_field(m.group(0))}'", text)
