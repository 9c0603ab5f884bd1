"""Files shipped with the package (the demo model), found in an installed wheel and in a checkout.

The repository keeps them in the top-level ``sample_data/`` folder; the wheel carries that folder
inside the package as ``napari_gradcam/sample_data/`` (``pyproject.toml``: hatch ``force-include``).
An editable install imports the package from ``src/``, where the folder is two levels up.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

#: where shipped files are looked for, first match wins: the installed wheel, then the checkout
SEARCH_PATH = (_PACKAGE / "sample_data", _PACKAGE.parents[1] / "sample_data")

DEMO_MODEL = "demo_model.safetensors"


def shipped_file(name: str) -> Path:
    """Path of the shipped file ``name`` (the first existing one of :data:`SEARCH_PATH`; the first
    candidate when none exists, so that a message can name where it was expected)."""
    for folder in SEARCH_PATH:
        if (folder / name).is_file():
            return folder / name
    return SEARCH_PATH[0] / name


def demo_model_path() -> Path:
    """Path of the small demo model shipped with the package (simple_cnn, normal/pneumonia/covid phantoms)."""
    return shipped_file(DEMO_MODEL)
