"""P-ClArC: unlearn a finding without retraining, by projecting its direction out of a layer.

The artifact's concept vector is the difference of the mean activations (pooled over the cells of the
finding's box) of the cluster's members and of the other images of their class, normalised (the
"pattern" CAV, which follows the artifact's signal rather than a classifier's filter; Pahde et al.
2022).  The bundle gets a :class:`~napari_gradcam.bundle.projection.Projection` of that layer:
``h' = h - v v^T (h - z)``, ``z`` the clean images' mean, so clean activations keep their place along
``v`` and the artifact's excess is removed (Anders et al., Information Fusion 2022).  It applies at
the box's cells (widened by a margin) unless ``everywhere``: on our planted-marker test, projecting at
every position of the last convolutional layer also removed class evidence (see docs/unlearn.md).
"""

from __future__ import annotations

import copy
import os
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import GradCamError, LayerError
from .findings import AuditFindings, read_audit, read_images

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

#: Images read per side (members, others) for the concept vector.
MAX_IMAGES = 1000


def pooled_activations(bundle: "ModelBundle", images: Sequence[np.ndarray], layer: str,
                       box: Sequence[float] | None = None, batch_size: int = 32) -> np.ndarray:
    """Activations of ``layer`` averaged over the cells of ``box`` (all cells without): (N, C) float64.

    ``images``: N images as read (any dtype); ``box``: [y0, x0, y1, x1] fractions.  The layer's output
    as the bundle computes it (after any projections it already carries).
    """
    import torch

    from .. import models
    from ..bundle.projection import grid_box
    from ..preprocess import bundle_tensor

    module = models.get_module(bundle.model, layer)
    grabbed: list = []

    def hook(_m, _i, out):
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LayerError(f"Layer {layer!r} gives {shape} outputs; P-ClArC projects (B, C, H, W) feature maps "
                             "of a convolutional layer.")
        y0, x0, y1, x1 = grid_box(list(box), out.shape[2], out.shape[3]) if box is not None else (0, 0, *out.shape[2:])
        grabbed.append(out.detach().float()[:, :, y0:y1, x0:x1].mean(dim=(2, 3)).cpu())

    handle = module.register_forward_hook(hook)
    bundle.model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                bundle.model(bundle_tensor(bundle, images[i: i + batch_size]).to(bundle.device))
    finally:
        handle.remove()
    return torch.cat(grabbed).double().numpy()


def concept_direction(members: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, z): the unit difference of the class-conditional means and the others' mean, both (C,) float32.

    ``members`` (N1, C) and ``others`` (N2, C) pooled activations.  Raises GradCamError when the two
    means coincide (the layer does not tell the members apart).
    """
    mu_m, mu_o = members.mean(axis=0), others.mean(axis=0)
    d = mu_m - mu_o
    norm = float(np.linalg.norm(d))
    scale = float(np.linalg.norm(mu_o)) + 1e-12
    if not np.isfinite(norm) or norm <= 1e-6 * scale:
        raise GradCamError("The cluster's members and the other images of their class have the same mean activation "
                           "at this layer; there is no direction to remove.")
    return (d / norm).astype(np.float32), mu_o.astype(np.float32)


def unlearn(bundle: "ModelBundle", audit_dir: "str | os.PathLike", cluster: int | None = None, *,
            layer: str | None = None, everywhere: bool = False, margin: int = 1, max_images: int = MAX_IMAGES,
            batch_size: int = 32) -> "ModelBundle":
    """A copy of ``bundle`` that no longer uses the audit's finding(s) (P-ClArC, no retraining).

    The concept vector of a finding is the difference of the mean activations, over the cells of its
    box, of the cluster's members and of the other images of their class (normalised); the reference
    point is the others' mean there.  By default the projection applies at the box's cells of the layer
    (widened by ``margin`` cells): the evidence of the class elsewhere keeps its activations.
    ``everywhere=True`` projects at every position (Anders et al.'s P-ClArC), which also removes
    whatever of the class's own evidence lies along the artifact's direction.

    Parameters
    ----------
    bundle : ModelBundle
        The audited model (left unchanged).
    audit_dir : str or path
        An audit folder, ``DIR`` or ``DIR:ID``; without an id (and ``cluster=None``) every cluster
        called a likely shortcut is unlearned, one projection each.
    cluster : int, optional
        The cluster id (wins over ``:ID``).
    layer : str, optional
        Where to project; default the audit's explained layer (``findings.json`` "layer").
    max_images : int
        At most this many members and as many other images (a seeded random choice) per finding.

    Returns
    -------
    ModelBundle
        A new bundle (its own copy of the network) carrying one projection per finding; saved with
        :func:`napari_gradcam.save_model`, the projection travels in the file and applies on every path.
    """
    from ..bundle.projection import Projection, attach

    t0 = time.perf_counter()
    audit = read_audit(audit_dir, cluster)
    layer = layer or audit.layer or bundle.target_layer
    _check_classes(bundle, audit)
    out = _copy(bundle)
    for f in audit.findings:
        if not f.others:
            raise GradCamError(f"Cluster {f.id} of {audit.folder} holds every image of class {f.class_name!r}; "
                               "P-ClArC needs clean images of the class to contrast it with.")
        acts_m = pooled_activations(out, read_images(f.members, max_images), layer, f.box, batch_size)
        acts_o = pooled_activations(out, read_images(f.others, max_images, seed=1), layer, f.box, batch_size)
        v, z = concept_direction(acts_m, acts_o)
        info = {**audit.record("p-clarc"), "clusters": [f.id], "classes": [f.class_name], "boxes": [list(f.box)],
                "n_members": len(acts_m), "n_others": len(acts_o)}
        region = None if everywhere else list(f.box)
        # the next finding's vector is measured with this one's projection in place
        attach(out, out.projections + [Projection(layer, v, z, info, region, int(margin))])
    out.notes = list(out.notes) + [f"unlearned (P-ClArC) {len(audit.findings)} finding(s) of {audit.folder} at "
                                   f"{layer} in {time.perf_counter() - t0:.1f} s"]
    return out


def _check_classes(bundle: "ModelBundle", audit: AuditFindings) -> None:
    if audit.classes and list(audit.classes) != bundle.classes:
        raise GradCamError(f"The audit in {audit.folder} is of a model with classes {audit.classes}, this model's are "
                           f"{bundle.classes}.")


def _copy(bundle: "ModelBundle") -> "ModelBundle":
    """A bundle with its own deep copy of the network and config (the projections re-installed on it)."""
    from ..bundle import ModelBundle

    return ModelBundle(copy.deepcopy(bundle.model), copy.deepcopy(bundle.config), list(bundle.notes),
                       bundle.onnx_graph, list(getattr(bundle, "projections", [])))
