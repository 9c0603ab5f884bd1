"""A-ClArC: unlearn a finding by training with its artifact pasted into images of every class.

The artifact is the content of the finding's box cut from the cluster's members (at the network's
input size, where the audit found it).  While training, a share ``p`` of the images of every class get
one member's patch pasted at the box, shifted by a few pixels, with their labels kept: the artifact
then predicts nothing and the network stops relying on it (Anders et al., "Finding and removing
Clever Hans", Information Fusion 2022).  Every class ends with the same share of artifact images
(:func:`class_rates`).  The paste runs on the training batch before the usual
augmentation (so the artifact is rotated, shifted and blurred with the image); each torchrun process
reads the artifacts itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import GradCamError
from ..bundle.projection import grid_box
from .findings import read_audit, read_images

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: Member images whose patches are kept per finding.
MAX_PATCHES = 256
#: Jitter of the pasted position, as a fraction of the input size (at least one pixel).
JITTER = 0.03


class ArtifactPaste:
    """Training-batch transform: paste artifact patches into a share of the images of every class.

    Parameters
    ----------
    patches : list of (torch.Tensor, (int, int))
        Per finding: (N, C, h, w) float32 unit-range patches and the (row, column) of their top-left
        corner on the S x S input.
    rates : list of numpy.ndarray
        Per finding: (n_classes,) probability that an image of each class gets one of its patches
        (chosen at random).  Without labels (e.g. BatchNorm recalibration) every image gets ``p``.
    p : float
        The share of images that carry the artifact in every class.
    jitter : int
        The pasted position moves by up to this many pixels in each direction.
    base : callable, optional
        The augmentation applied after pasting: ``base(x, generator=g)``.
    record : dict
        What is unlearned (stored in the trained bundle's summary as ``unlearned``).
    """

    #: Tells the training step to pass the batch's labels.
    per_label = True

    def __init__(self, patches: list, rates: list, p: float, jitter: int, base: Callable | None = None,
                 record: dict[str, Any] | None = None) -> None:
        self.patches, self.rates, self.p, self.jitter, self.base = patches, rates, float(p), int(jitter), base
        self.record = record or {}

    def __call__(self, x: "torch.Tensor", generator: "torch.Generator | None" = None,
                 labels: "torch.Tensor | None" = None) -> "torch.Tensor":
        """(B, C, S, S) unit-range float batch (and its (B,) labels) -> artifacts pasted, then ``base``."""
        import torch

        b, _, s, _ = x.shape
        x = x.clone()
        for (stack, (y0, x0)), rates in zip(self.patches, self.rates):
            prob = (torch.as_tensor(rates, dtype=torch.float32)[labels.cpu().long()] if labels is not None
                    else torch.full((b,), self.p))
            chosen = torch.nonzero(torch.rand(b, generator=generator) < prob).flatten().tolist()
            pick = torch.randint(len(stack), (len(chosen),), generator=generator).tolist()
            shift = torch.randint(-self.jitter, self.jitter + 1, (len(chosen), 2), generator=generator).tolist()
            for k, i in enumerate(chosen):
                self._paste(x[i], stack[pick[k]].to(x.device, x.dtype), y0 + shift[k][0], x0 + shift[k][1], s)
        return self.base(x, generator=generator) if self.base is not None else x

    @staticmethod
    def _paste(img: "torch.Tensor", patch: "torch.Tensor", y0: int, x0: int, s: int) -> None:
        """Write ``patch`` (C, h, w) into ``img`` (C, S, S) at (y0, x0), clipped to the image."""
        h, w = patch.shape[1:]
        ty0, tx0, ty1, tx1 = max(y0, 0), max(x0, 0), min(y0 + h, s), min(x0 + w, s)
        if ty1 > ty0 and tx1 > tx0:
            img[:, ty0:ty1, tx0:tx1] = patch[:, ty0 - y0: ty1 - y0, tx0 - x0: tx1 - x0]


def class_rates(p: float, share: float, class_index: int, n_classes: int) -> np.ndarray:
    """(n_classes,) paste probabilities that give every class the same share of artifact images.

    The finding's class already carries the artifact in ``share`` of its images (its cluster's share of
    the class in the audit), so the common share is ``t = max(p, share)``: the other classes get ``t``,
    the finding's class ``(t - share) / (1 - share)`` of its remaining images.
    """
    t = max(float(p), float(share))
    rates = np.full(n_classes, t)
    rates[class_index] = (t - share) / (1 - share) if share < 1 else 0.0
    return rates


def artifact_patches(images: list[np.ndarray], box, in_channels: int, size: int) -> tuple["torch.Tensor", tuple]:
    """The box's content of ``images`` at the network's input: ((N, C, h, w) float32 in [0, 1], (y0, x0))."""
    import torch

    from ..preprocess import image_to_tensor

    y0, x0, y1, x1 = grid_box(list(box), size, size)
    c = int(in_channels)
    crops = [image_to_tensor(im, c, size, [0.0] * c, [1.0] * c)[:, y0:y1, x0:x1] for im in images]
    return torch.stack(crops).contiguous(), (y0, x0)


def build_paste(target: "str | os.PathLike", in_channels: int, size: int, p: float = 0.5,
                base: Callable | None = None, classes: list[str] | None = None) -> ArtifactPaste:
    """An :class:`ArtifactPaste` of the finding(s) ``target`` (``DIR`` or ``DIR:ID`` of an audit).

    ``classes``: the training classes; every finding's class must be one of them.
    """
    audit = read_audit(target)
    classes = list(classes) if classes is not None else list(audit.classes)
    patches, rates, shares = [], [], []
    for f in audit.findings:
        if f.class_name not in classes:
            raise GradCamError(f"Cluster {f.id} of {audit.folder} is of class {f.class_name!r}, which the training "
                               f"data does not have.")
        patches.append(artifact_patches(read_images(f.members, MAX_PATCHES), f.box, in_channels, size))
        shares.append(len(f.members) / (len(f.members) + len(f.others)))
        rates.append(class_rates(p, shares[-1], classes.index(f.class_name), len(classes)))
    jitter = max(1, int(round(JITTER * size)))
    record = audit.record("a-clarc", probability=float(p), jitter_px=jitter, class_shares=shares,
                          rates=[r.tolist() for r in rates], n_patches=[int(len(t)) for t, _ in patches])
    return ArtifactPaste(patches, rates, p, jitter, base, record)


def unlearned_record(augmentation: Any) -> dict[str, Any]:
    """``{"unlearned": [record]}`` for a training summary when ``augmentation`` pastes artifacts, else {}."""
    record = getattr(augmentation, "record", None)
    return {"unlearned": [record]} if isinstance(augmentation, ArtifactPaste) and record else {}
