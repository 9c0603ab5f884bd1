"""The gradient CAM family: one weight formula per method (:mod:`.formulas`) over the shared code of
:mod:`.family` (hooks, one forward pass, a backward pass through the head only, weighted sum, ReLU,
fusion of several layers).  Importing the package registers the methods."""

from .family import FUSIONS, GradientCam, first_component, fuse_maps, gradient_maps
from .formulas import family_member, gradient_cam

__all__ = ["FUSIONS", "GradientCam", "family_member", "first_component", "fuse_maps", "gradient_cam", "gradient_maps"]
