r"""The gradient CAM family: one function per method, the weighted activations.

Each method below is one function ``weigh(A, G)``: A (B, K, h, w) are the activations of the
explained layer, G = dy/dA the gradients of the explained score y (a logit, before softmax); it
returns the weighted activations (B, K, h, w).  The map is then

    L = ReLU( sum_k weigh(A, G)_k )

(or, with ``smooth="eigen"``, the first principal component of the weighted activations in place
of the sum), computed by the shared code in :mod:`.family` (hooks, one forward pass, a backward pass
through the head only, fusion of several layers).  :func:`gradient_cam` registers a function as a
method of :mod:`..registry`.

Agreement with the anchor libraries (tests/test_methods_gradient.py): each method matches
pytorch-grad-cam's class of the same name to correlation > 0.99 at ResNet-18 ``layer4`` and at a
VGG-16 conv layer followed by an in-place ReLU (the reference computed on a copy without in-place
ReLUs: pytorch-grad-cam would read the ReLU'd tensor there).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

from .family import GradientCam, gradient_maps
from ..registry import MapOutput, Method, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

_FAMILY: dict[str, GradientCam] = {}


def gradient_cam(name: str, title: str, description: str, *, aliases: tuple[str, ...] = (),
                 uses_gradients: bool = True, eigen: bool = False, fusion_gamma: float | None = None,
                 default_layers: Callable | None = None) -> Callable:
    """Decorator: register ``weigh(A, G) -> weighted activations`` as the method ``name``
    (any layer, several layers fused, ``smooth="eigen"``)."""
    def add(weigh: Callable) -> Callable:
        cam = GradientCam(name, weigh, uses_gradients, eigen, fusion_gamma)
        _FAMILY[name] = cam
        register(Method(name, title, "cam", description, partial(_compute, cam), aliases=aliases,
                        multi_layer=True, eigen_smooth=True, default_layers=default_layers, score_functions=True))
        return weigh

    return add


def family_member(name: str) -> GradientCam:
    """The :class:`.family.GradientCam` registered as ``name`` (canonical name)."""
    return _FAMILY[name]


def _compute(cam: GradientCam, bundle, x, targets, layers, eigen: bool = False, fusion: str = "mean",
             **_options) -> MapOutput:
    logits, maps, used = gradient_maps(bundle.model, x, targets, layers, cam, eigen, fusion)
    return MapOutput(logits, maps, used)


def _channel_sum(t: "torch.Tensor") -> "torch.Tensor":
    return t.sum(dim=(2, 3), keepdim=True)


@gradient_cam("gradcam", "Grad-CAM",
              "gradient-weighted activations: channel weights = spatial mean of d(score)/d(activation)",
              aliases=("grad-cam",))
def gradcam(A, G):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    w_k = 1/(h w) \sum_ij G_k(i, j);   weighted_k = w_k A_k
    """
    return G.mean(dim=(2, 3), keepdim=True) * A


@gradient_cam("gradcam++", "Grad-CAM++",
              "Grad-CAM with second-order pixel weights: sharper when several regions carry evidence",
              aliases=("grad-cam++", "gradcampp", "gradcamplusplus"))
def gradcam_plusplus(A, G):
    r"""Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), closed form for an exponential score.

    alpha_k(i, j) = G^2 / (2 G^2 + \sum_ab A_k(a, b) G^3 + eps)  (0 where G = 0; eps = 1e-6 as in
    pytorch-grad-cam);   w_k = \sum_ij alpha_k(i, j) ReLU(G_k(i, j));   weighted_k = w_k A_k
    """
    import torch

    g2 = G.pow(2)
    alpha = g2 / (2 * g2 + _channel_sum(A) * g2 * G + 1e-6)
    alpha = torch.where(G != 0, alpha, torch.zeros_like(alpha))
    return _channel_sum(alpha * torch.relu(G)) * A


@gradient_cam("hirescam", "HiResCAM",
              "element-wise gradient x activation summed over channels: the map's sum is the score's "
              "first-order change, position by position",
              aliases=("hi-res-cam",))
def hirescam(A, G):
    r"""HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891).

    weighted_k(i, j) = G_k(i, j) A_k(i, j)  (no spatial averaging of the gradients, so the map stays
    faithful to the model: for a GAP + linear head it equals CAM)
    """
    return G * A


@gradient_cam("xgradcam", "XGrad-CAM",
              "axiom-based Grad-CAM: channel weights = activation-weighted mean of the gradients",
              aliases=("xgrad-cam", "axiom-gradcam"))
def xgradcam(A, G):
    r"""XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312).

    w_k = \sum_ij G_k(i, j) A_k(i, j) / (\sum_ij A_k(i, j) + eps)  (eps = 1e-7);   weighted_k = w_k A_k
    """
    return _channel_sum(G * A) / (_channel_sum(A) + 1e-7) * A


@gradient_cam("layercam", "LayerCAM",
              "positive gradients weight each position: fine maps from shallow layers; several layers are "
              "fused (Jiang et al. 2021)",
              aliases=("layer-cam",), fusion_gamma=2.0)
def layercam(A, G):
    r"""LayerCAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps
    for Localization").

    weighted_k(i, j) = ReLU(G_k(i, j)) A_k(i, j).  Fusing layers by their maximum (``fusion="max"``,
    the paper's), each [0, 1] map M is first scaled to tanh(2 M) (gamma = 2), so shallow layers' weak
    but precise responses count.
    """
    import torch

    return torch.relu(G) * A


@gradient_cam("gradcam-elementwise", "Grad-CAM element-wise",
              "Grad-CAM without averaging: ReLU of gradient x activation per position, summed over channels",
              aliases=("gradcamelementwise", "grad-cam-elementwise"))
def gradcam_elementwise(A, G):
    r"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``; a HiResCAM variant,
    Draelos & Carin 2020).

    weighted_k(i, j) = ReLU(G_k(i, j) A_k(i, j))
    """
    import torch

    return torch.relu(G * A)


@gradient_cam("eigencam", "Eigen-CAM",
              "first principal component of the activations: class-agnostic, no gradients (one forward pass)",
              aliases=("eigen-cam",), uses_gradients=False, eigen=True)
def eigencam(A, G):
    r"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299).

    L = ReLU(first principal component of the activations A), oriented so that it correlates
    positively with \sum_k A_k; the same map for every class.
    """
    return A


@gradient_cam("eigengradcam", "Eigen-Grad-CAM",
              "first principal component of gradient x activation: class-specific Eigen-CAM",
              aliases=("eigen-grad-cam",), eigen=True)
def eigengradcam(A, G):
    r"""Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``; Eigen-CAM of Muhammad & Yeasin 2020 on G A).

    L = ReLU(first principal component of G_k(i, j) A_k(i, j)), oriented to correlate positively with
    \sum_k G_k A_k (HiResCAM's map)
    """
    return G * A


@gradient_cam("layercam-fine", "LayerCAM (fine)",
              "LayerCAM over the last three resolution stages, fused: the finest maps, for small findings",
              aliases=("fine-layercam", "layercam-multi"), fusion_gamma=2.0,
              default_layers=lambda bundle: _fine_layers(bundle))
def layercam_fine(A, G):
    r"""LayerCAM (Jiang et al., IEEE TIP 2021) at the outputs of the model's last three resolution
    stages (:func:`napari_gradcam.introspect.stage_outputs`), fused: weighted_k(i, j) = ReLU(G_k(i, j)) A_k(i, j)."""
    return layercam(A, G)


def _fine_layers(bundle) -> list[str]:
    from ...layer_choice import fine_layers

    return fine_layers(bundle)
