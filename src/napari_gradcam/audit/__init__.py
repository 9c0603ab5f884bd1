"""Audit a data set: batched explanations over a folder, where the evidence lies, strategies (SpRAy),
counterfactual confirmation of shortcuts, and the outputs a user keeps.

Modules: :mod:`.sources` (what is read), :mod:`.maps` (the batched pass and its zarr store),
:mod:`.shares` (frame, cells, outside a mask), :mod:`.spray` (clusters, embedding, atypical scores),
:mod:`.confirm` (removal and insertion tests), :mod:`.findings` (table and clusters), :mod:`.result`
(:class:`Audit`), :mod:`.report` (report.html), :mod:`.run` (:func:`iter_audit`, :func:`audit`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .._lazy import lazy_getattr

_LAZY = {
    "audit": "run", "iter_audit": "run", "AuditEvent": "run", "Audit": "result",
    "removal_test": "confirm", "insertion_test": "confirm", "ConfirmSettings": "findings",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    """``napari_gradcam.audit`` is both this package and the function: once the package is imported,
    Python sets it as the attribute ``audit`` of ``napari_gradcam``, so ``ng.audit(model, source)`` must
    work on the module too."""

    def __call__(self, *args, **kwargs):
        from .run import audit as run_audit

        return run_audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
