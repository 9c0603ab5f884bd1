"""``python -m napari_gradcam ...`` is the ``napari-gradcam`` command (torchrun runs it this way)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
