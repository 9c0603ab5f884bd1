"""Remove a shortcut an audit found, and check that it is gone (Class Artifact Compensation).

* :mod:`.aclarc`: A-ClArC, retraining with the artifact pasted into every class
  (``napari-gradcam train ... --unlearn AUDIT_DIR[:ID]``, ``TrainConfig.unlearn``);
* :mod:`.pclarc`: P-ClArC, the artifact's direction projected out of a layer without retraining
  (:func:`unlearn`, ``napari-gradcam unlearn MODEL AUDIT_DIR[:ID] --out M2.safetensors``); the
  projection is stored in the bundle as data (:mod:`napari_gradcam.bundle.projection`);
* :mod:`.proof`: :func:`recheck`, the old findings' removal and insertion tests re-run on the new model;
* :mod:`.findings`: reading an audit folder's findings.

Nothing heavy is imported with this package.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .._lazy import lazy_getattr

_LAZY = {
    "unlearn": "pclarc",
    "recheck": "proof",
    "read_audit": "findings",
    "build_paste": "aclarc",
    "ArtifactPaste": "aclarc",
    "difference_interval": "proof",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    """``napari_gradcam.unlearn`` is both this package and the function ``ng.unlearn``: once the package is
    imported, Python binds the name ``unlearn`` of ``napari_gradcam`` to it, so calling it calls
    :func:`.pclarc.unlearn`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .pclarc import unlearn

        return unlearn(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
