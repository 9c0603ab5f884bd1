"""The explanation methods, by family, and their registry.

* :mod:`.registry`: one :class:`Method` per name (its compute function and what it accepts),
  :func:`get_method`, :func:`list_methods`, and the rule of which layer a method takes
  (:func:`applicable_layer`).
* :mod:`.cam`: CAM (the linear head's weights on the pooled layer).
* :mod:`.gradient`: the gradient CAM family (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM, ...): one
  weight formula each in :mod:`.gradient.formulas`.
* :mod:`.perturbation`: Score-CAM and Ablation-CAM.
* :mod:`.attribution`: pixel attributions (captum).

A family module registers its methods when imported; importing this package imports them in the order
of :data:`.registry.METHOD_MODULES` (first ``register`` first listed), whichever module is asked for first.
"""

from .registry import (
    MapOutput, Method, applicable_layer, canonical_method, get_method, list_methods, method_names, method_title,
    register, target_scores,
)
from . import cam, gradient, perturbation, attribution  # noqa: E402,F401,I001 - registers, in the listed order

__all__ = ["MapOutput", "Method", "applicable_layer", "canonical_method", "get_method", "list_methods",
           "method_names", "method_title", "register", "target_scores"]
