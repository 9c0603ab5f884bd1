"""Core results -> napari layers (LayerDataTuples), and napari layers -> 2D images for the core.

Nothing here computes anything: it picks the slice to analyse, and copies the source layer's
geometry (scale, translate, the slice position) onto the result layers so that they overlay it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..engine.methods import method_title
from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image

    from ..engine import FeatureMaps, Heatmap, TiledHeatmaps

#: metadata key marking the layers this plugin made (so widgets can replace / skip them)
TAG = "napari_gradcam"

#: colormap of single-image heatmaps: perceptual, black at 0 (so additive blending leaves the image as is)
HEATMAP_COLORMAP = "inferno"

def _register_class_colormaps() -> tuple[str, ...]:
    """napari colormaps "black -> the class's colour" (:mod:`napari_gradcam.colours`), by name."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    from ..colours import CLASS_COLOURS

    names = []
    for name, rgb in CLASS_COLOURS:
        cmap = Colormap([[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]], name=f"gradcam {name}", display_name=f"class {name}")
        names.append(ensure_colormap(cmap).name)
    return tuple(names)


#: one colormap per class (by its index in the model's classes), the colours of the CLI's overlays too
CLASS_COLORMAPS = _register_class_colormaps()


def class_colormap(index: int, colormaps: Sequence[str] = CLASS_COLORMAPS) -> str:
    """The colormap of the class with this index in the model's classes."""
    return colormaps[int(index) % len(colormaps)]


#: colours of signed maps (pixel attributions in [-1, 1]): blue (against the class), transparent at 0, red (for
#: it), the alpha rising with |value|: with translucent blending the image shows through where there is no
#: evidence and strong evidence is coloured over bright bone and dark lung alike (additive blending, black
#: at zero, made blue vanish over the mediastinum and the diaphragm)
SIGNED_COLORS = ((0.15, 0.35, 1.0, 1.0), (0.15, 0.35, 1.0, 0.0), (1.0, 0.2, 0.1, 0.0), (1.0, 0.2, 0.1, 1.0))
SIGNED_CONTROLS = (0.0, 0.5, 0.5, 1.0)


def signed_colormap():
    """The diverging napari Colormap of signed maps, centred at 0 (contrast limits (-1, 1))."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=np.asarray(SIGNED_COLORS), controls=np.asarray(SIGNED_CONTROLS), name="signed evidence",
                    display_name="signed evidence")


def display_of(signed: bool, colormap=HEATMAP_COLORMAP, opacity: float = 0.5) -> dict:
    """How a map is shown over its image: an unsigned map with its colormap (black at 0) added to the image;
    a signed one on the diverging colormap with symmetric contrast limits, blended translucently."""
    if signed:
        return {"colormap": signed_colormap(), "contrast_limits": (-1.0, 1.0), "blending": "translucent",
                "opacity": 0.85}
    return {"colormap": colormap, "contrast_limits": (0.0, 1.0), "blending": "additive", "opacity": opacity}


#: classify / explain work on at most this many pixels; larger multiscale layers use a coarser level
MAX_EXPLAIN_PIXELS = 4096 * 4096


def is_plugin_layer(layer) -> bool:
    """True for the heatmap / feature-map layers this plugin added."""
    return isinstance(getattr(layer, "metadata", None), dict) and TAG in layer.metadata


def source_layers(viewer: "napari.Viewer") -> list:
    """Image layers that can be classified / explained (not our own heatmaps)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image) and not is_plugin_layer(layer)]


@dataclass
class ImagePlane:
    """One 2D plane of an image layer, ready for the core, and where it sits in the world.

    Attributes
    ----------
    data : (H, W) or (H, W, 3|4) array (numpy or dask: read it in a worker, not on the GUI thread).
    index : the indices of the leading (non-spatial) axes of the plane; () for a 2D layer.
    scale, translate : world geometry of the plane's pixels in the layer (all layer axes),
        already corrected for the multiscale level used.
    level : multiscale level used (0 for single-scale layers).
    name : the source layer's name.
    """

    data: Any
    index: tuple[int, ...]
    scale: np.ndarray
    translate: np.ndarray
    level: int = 0
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``"xray"`` or ``"stack[3]"``: the source name with its slice."""
        return f"{self.name}[{','.join(map(str, self.index))}]" if self.index else self.name


def _leading_index(viewer: "napari.Viewer", layer, n_lead: int, shape: Sequence[int]) -> tuple[int, ...]:
    if n_lead == 0:
        return ()
    coords = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    coords = coords[-layer.ndim:] if len(coords) >= layer.ndim else np.pad(coords, (layer.ndim - len(coords), 0))
    return tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(coords[:n_lead], shape[:n_lead]))


def _pick_level(levels: Sequence, spatial: slice, max_pixels: int) -> int:
    """The finest level whose plane has at most ``max_pixels`` pixels (else the coarsest)."""
    for i, lev in enumerate(levels):
        h, w = lev.shape[spatial][:2]
        if h * w <= max_pixels:
            return i
    return len(levels) - 1


def layer_plane(
    viewer: "napari.Viewer",
    layer: "Image",
    index: tuple[int, ...] | None = None,
    level: int | None = None,
    max_pixels: int = MAX_EXPLAIN_PIXELS,
) -> ImagePlane:
    """The 2D plane of ``layer`` shown at the viewer's current slice (or at ``index``).

    For a multiscale layer, ``level`` (default: the finest level with at most ``max_pixels``
    pixels) is used and the returned scale/translate describe that level's pixels.
    The data is not read (dask stays lazy).
    """
    from napari.layers import Image

    if not isinstance(layer, Image):
        raise GradCamError(f"Layer {getattr(layer, 'name', layer)!r} is not an image layer; pick an image layer.")
    rgb = bool(layer.rgb)
    ndim = int(layer.ndim)  # spatial + leading axes, without the rgb channel axis
    if ndim < 2:
        raise GradCamError(f"Layer {layer.name!r} is not a 2D image (it has {ndim} dimension).")
    n_lead = ndim - 2
    levels = list(layer.data) if layer.multiscale else [layer.data]
    full_shape = tuple(levels[0].shape)
    if level is None:
        level = _pick_level(levels, slice(n_lead, n_lead + 2), max_pixels) if layer.multiscale else 0
    data = levels[level]
    if index is None:
        index = _leading_index(viewer, layer, n_lead, full_shape)
    index = tuple(int(i) for i in index)
    if len(index) != n_lead:
        raise GradCamError(f"Layer {layer.name!r} needs {n_lead} slice indices, not {len(index)}.")
    plane = data[index] if index else data
    scale = np.asarray(layer.scale, dtype=float).copy()
    translate = np.asarray(layer.translate, dtype=float).copy()
    if level:
        # level pixels are bigger: napari's pixel centres sit at i * scale + translate
        factor = np.array([full_shape[n_lead + k] / data.shape[n_lead + k] for k in range(2)])
        translate[-2:] += scale[-2:] * (factor - 1) / 2
        scale[-2:] *= factor
    if rgb and plane.shape[-1] not in (3, 4):  # defensive: napari's rgb means the last axis is 3 or 4
        raise GradCamError(f"Layer {layer.name!r} is RGB but its last axis has {plane.shape[-1]} values.")
    return ImagePlane(plane, index, scale, translate, level, layer.name)


def stack_planes(layer: "Image") -> tuple[Any, list[tuple[int, ...]]]:
    """All 2D planes of a (non-multiscale) stack as an (N, H, W[, C]) array (lazy for dask) and their indices."""
    data = layer.data[0] if layer.multiscale else layer.data
    n_lead = int(layer.ndim) - 2
    lead_shape = tuple(data.shape[:n_lead])
    indices = [tuple(int(i) for i in ix) for ix in np.ndindex(*lead_shape)] if n_lead else [()]
    flat = data.reshape((-1, *data.shape[n_lead:])) if n_lead else data[None]
    return flat, indices


def _place(arr: np.ndarray, plane: ImagePlane, extra_scale=(1.0, 1.0)) -> tuple[np.ndarray, dict]:
    """Give a 2D result the source plane's geometry: leading axes of length 1 at the plane's slice."""
    n_lead = len(plane.index)
    scale = plane.scale.copy()
    translate = plane.translate.copy()
    f = np.asarray(extra_scale, dtype=float)
    translate[-2:] += scale[-2:] * (f - 1) / 2
    scale[-2:] *= f
    if n_lead:
        translate[:n_lead] += np.asarray(plane.index, dtype=float) * scale[:n_lead]
        arr = arr.reshape((1,) * n_lead + arr.shape)
    return arr, {"scale": tuple(scale), "translate": tuple(translate)}


#: longest result-layer name napari's layer list shows without eliding it at its default width (it cuts the
#: middle of longer names: "Grad-CAM cov...y_pneumonia]" hid the class)
MAX_NAME = 24


def result_name(head: str, source: str, tail: str = "") -> str:
    """``"<head> [<source>]<tail>"``, with the source shortened ("xray_pn…") so that the whole name fits in
    :data:`MAX_NAME` characters: the head (method and class) and a slice index ("[2]") are never cut; the
    full source name stays in the layer's metadata."""
    base, bracket, index = source.partition("[")  # a stack's slice ("stack[2]") is never cut
    index = bracket + index
    room = max(MAX_NAME - len(head) - len(tail) - len(index) - 3, 4)  # at least "xra…"
    if len(base) > room:
        base = base[:room - 1].rstrip() + "…"
    return f"{head} [{base}{index}]{tail}"


#: shorter labels for the methods whose titles would push the class out of a layer name (the full title
#: stays in the layer's metadata)
SHORT_TITLES = {"gradcam-elementwise": "Grad-CAM ew", "integrated-gradients": "IntGrad",
                "guided-backprop": "GuidedBP", "guided-gradcam": "Guided GC", "layercam-fine": "LayerCAM fine",
                "eigengradcam": "EigenGradCAM"}


def heatmap_name(method: str, target: str, layer: str, source: str, default_layer: str = "") -> str:
    """``"Grad-CAM pneumonia [xray_pn…]"``: method and class first, the image last, shortened so that napari's
    layer list shows the name whole (:func:`result_name`); `` @layer`` at the end when the method was
    computed at a layer other than the model's default (never for pixel attributions: no layer)."""
    from ..engine.methods import get_method

    spec = get_method(method)
    at = f" @{layer}" if spec.uses_layer and layer and layer != default_layer else ""
    return result_name(f"{SHORT_TITLES.get(spec.name, spec.title)} {target}", source, at)


def coarse_map(heatmap: "Heatmap", factor: float = 1.0) -> np.ndarray | None:
    """The map at its layer's resolution, (h, w) float32 in [0, 1] times ``factor`` (the same values as
    ``heatmap.data`` before its bilinear upsampling), or None when ``data`` is not that upsampling
    (sub-cell shifts, test-time augmentation, pixel attributions, a map as large as the image)."""
    from ..engine.methods import get_method
    from ..errors import GradCamError

    raw = np.asarray(heatmap.raw, dtype=np.float32)
    try:
        spec = get_method(heatmap.method)
    except GradCamError:
        return None
    if (heatmap.shifts != 1 or "aug" in (getattr(heatmap, "smooth", "") or "") or spec.family != "cam"
            or spec.signed or raw.ndim != 2
            or raw.shape[0] >= heatmap.data.shape[0] or raw.shape[1] >= heatmap.data.shape[1]):
        return None
    peak = float(heatmap.max)
    positive = np.maximum(raw, 0)
    scale = factor / peak if peak > 0 else 0.0
    return np.clip(positive * np.float32(scale), 0, max(factor, 0)).astype(np.float32)


def heatmap_layer(heatmap: "Heatmap", plane: ImagePlane, model: str = "", colormap: str = HEATMAP_COLORMAP,
                  factor: float = 1.0, scale_name: str = "each", source_id: str = "",
                  default_layer: str = "") -> tuple:
    """A :class:`Heatmap` as an Image LayerDataTuple overlaying ``plane``.

    The map goes to napari on its own grid (``heatmap.coarse``: the layer's cells, the network input's
    pixels for attributions), placed with the heatmap's ``scale`` and ``offset`` over the image's pixels
    and shown with linear interpolation (the upsampling ``Heatmap.data`` would do), so the full-size map
    is never computed here; ``factor`` puts it on the brightness scale it shares with other classes
    (:mod:`napari_gradcam.engine.scaling`).
    """
    coarse = np.asarray(heatmap.coarse, dtype=np.float32) * np.float32(factor)
    data, geo = _place(coarse, plane)  # the plane's own geometry (leading axes at its slice)
    scale, translate = np.asarray(geo["scale"], dtype=float), np.asarray(geo["translate"], dtype=float)
    translate[-2:] += scale[-2:] * np.asarray(heatmap.offset, dtype=float)
    scale[-2:] *= np.asarray(heatmap.scale, dtype=float)
    geo = {"scale": tuple(scale), "translate": tuple(translate)}
    full_hw = tuple(int(n) for n in heatmap.image_shape)
    meta = {
        TAG: "heatmap",
        "widget": "explain",
        "method": heatmap.method,
        "shifts": heatmap.shifts,
        "target": heatmap.target,
        "target_index": int(heatmap.target_index),
        "score": float(heatmap.score),
        "layer": heatmap.layer,
        "source": plane.name,
        "source_id": source_id,
        "slice": list(plane.index),
        "max": float(heatmap.max),
        "probabilities": [float(p) for p in heatmap.probabilities],
        "model": model,
        "coarse": tuple(coarse.shape) != full_hw,
        "image_shape": [int(n) for n in full_hw],
        "scale": scale_name,
        "scale_factor": float(factor),
    }
    signed = bool(getattr(heatmap, "signed", False))
    meta["signed"] = signed
    kwargs = {
        "name": heatmap_name(heatmap.method, heatmap.target, heatmap.layer, plane.label, default_layer),
        **display_of(signed, colormap),
        "interpolation2d": "linear",
        "metadata": meta,
        **geo,
    }
    return data, kwargs, "image"


def coarse_tiled_step(result: "TiledHeatmaps") -> int:
    """The step (image pixels) of the grid tiled maps go to napari on: the engine's blending grid, on
    which they were computed before their upsampling (1 for small tiles)."""
    return max(1, int(getattr(result, "extra", {}).get("blend_step", 1) or 1))


def block_mean(maps, step: int):
    """(C, H, W) numpy or dask -> (C, ceil(H/step), ceil(W/step)) float32 means of step x step blocks
    (edge blocks: the mean of what they hold)."""
    if step <= 1:
        return maps
    C, H, W = maps.shape
    if hasattr(maps, "dask"):
        import dask.array as da

        padded = da.pad(maps, ((0, 0), (0, -H % step), (0, -W % step)), mode="edge")
        return da.coarsen(np.mean, padded, {1: step, 2: step}).astype(np.float32)
    padded = np.pad(np.asarray(maps, np.float32), ((0, 0), (0, -H % step), (0, -W % step)), mode="edge")
    return padded.reshape(C, padded.shape[1] // step, step, padded.shape[2] // step, step).mean(axis=(2, 4),
                                                                                              dtype=np.float32)


def tiled_layers(result: "TiledHeatmaps", plane: ImagePlane, model: str = "", step: int = 1,
                 source_id: str = "") -> list[tuple]:
    """One Image LayerDataTuple per class of a :class:`TiledHeatmaps`, each in its class's colour.

    ``result.heatmaps`` may already be on a grid of ``step`` image pixels (:func:`block_mean`): the
    layers are placed with scale and translate over the image's pixels.
    """
    out = []
    heat = result.heatmaps
    lazy = bool(getattr(result, "extra", {}).get("lazy"))  # not computed: no breakdown (it needs every pixel)
    breakdown = {} if lazy else result.breakdown
    probabilities = {} if lazy else result.probabilities
    for k, cls in enumerate(result.classes):
        ci = result.class_indices[k] if k < len(result.class_indices) else k
        data, geo = _place(heat[k], plane, (step, step))
        meta = {
            TAG: "tiled",
            "widget": "tiled",
            "method": result.method,
            "target": cls,
            "target_index": int(ci),
            "source": plane.name,
            "source_id": source_id,
            "slice": list(plane.index),
            "share": breakdown.get(cls),
            "probability": probabilities.get(cls),
            "tile": int(result.tile),
            "stride": int(result.stride),
            "tiles": int(result.tiles),
            "grid_step": int(step),
            "model": model,
        }
        kwargs = {
            "name": result_name(f"tiled {method_title(result.method)} {cls}", plane.label),
            "colormap": class_colormap(ci),
            "blending": "additive",
            "opacity": 0.6,
            "contrast_limits": (0.0, 1.0),
            "interpolation2d": "linear",
            "metadata": meta,
            **geo,
        }
        out.append((data, kwargs, "image"))
    return out


def montage(maps: np.ndarray, pad: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """(n, h, w) -> one (rows*(h+pad)-pad, cols*(w+pad)-pad) image, each map scaled to [0, 1]."""
    n, h, w = maps.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad), np.float32)
    for i, m in enumerate(normalise_maps(maps)):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = m
    return out, (rows, cols)


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each (h, w) map scaled to [0, 1] by its own min and max (constant maps become 0)."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    rng = np.where(hi > lo, hi - lo, 1.0)
    return ((maps - lo) / rng).astype(np.float32)


def feature_layers(fm: "FeatureMaps", plane: ImagePlane, image_shape: tuple[int, int], grid: bool = False,
                   model: str = "", colormap: str = "viridis") -> list[tuple]:
    """Feature maps as one stacked layer (a slider over channels) or one montage beside the image."""
    maps = np.asarray(fm.maps, dtype=np.float32)
    n, h, w = maps.shape
    H, W = image_shape
    meta = {TAG: "features", "widget": "features", "layer": fm.layer, "channels": [int(c) for c in fm.channels],
            "scores": [float(s) for s in fm.scores], "source": plane.name, "slice": list(plane.index), "model": model}
    name = f"features @{fm.layer} [{plane.label}]"
    if not grid:
        # (n, h, w) over the image: a new leading axis (the channel slider) with the image's geometry
        data, geo = _place(normalise_maps(maps)[0], plane, (H / h, W / w))
        stack = normalise_maps(maps).reshape((n,) + data.shape[:-2] + (h, w))
        scale = (1.0, *geo["scale"])
        translate = (0.0, *geo["translate"])
        kwargs = {"name": name, "colormap": colormap, "contrast_limits": (0.0, 1.0), "metadata": meta,
                  "scale": scale, "translate": translate, "blending": "translucent"}
        return [(stack, kwargs, "image")]
    mont, (rows, cols) = montage(maps)
    # the montage has the image's height and sits to its right
    f = H / mont.shape[0]
    data, geo = _place(mont, plane, (f, f))
    translate = list(geo["translate"])
    translate[-1] += plane.scale[-1] * W * 1.05
    kwargs = {"name": f"{name} grid", "colormap": colormap, "contrast_limits": (0.0, 1.0),
              "metadata": {**meta, "grid": [rows, cols]}, "scale": geo["scale"], "translate": tuple(translate)}
    return [(data, kwargs, "image")]


def with_units(tuples: Sequence[tuple], source_layer) -> list[tuple]:
    """The LayerDataTuples with the source layer's units on their spatial axes (pixels on extra leading
    axes), so that results over a DICOM image in millimetres sit in the same world as the image (napari
    refuses layers whose units disagree)."""
    units = tuple(str(u) for u in getattr(source_layer, "units", ()) or ())
    if not units:
        return list(tuples)
    out = []
    for data, kwargs, ltype in tuples:
        kwargs = dict(kwargs)
        ndim = len(kwargs.get("scale") or ()) or np.ndim(data[0] if kwargs.get("multiscale") else data)
        if ltype == "points":
            ndim = np.shape(data)[-1]
        kwargs["units"] = (("pixel",) * max(0, ndim - len(units)) + units)[-ndim:]
        out.append((data, kwargs, ltype))
    return out


def replace_plugin_layers(viewer: "napari.Viewer", tuples: Sequence[tuple], widget: str, source: str,
                          keep: bool = False, source_layer=None) -> list:
    """Add the LayerDataTuples, replacing the layers ``widget`` made for ``source`` unless ``keep``:
    all or nothing; returns the layers added.  ``source_layer``: the image they belong to, whose units
    they take (:func:`with_units`).

    Every layer is built before the viewer changes, so a tuple that cannot become a layer leaves the
    viewer as it was; if adding fails part way, the layers added are taken out again and the previous
    ones put back where they were.
    """
    from napari.layers import Layer

    if source_layer is not None:
        tuples = with_units(tuples, source_layer)
    new = [Layer.create(data, dict(kwargs), ltype) for data, kwargs, ltype in tuples]
    old = [] if keep else [
        (i, layer) for i, layer in enumerate(viewer.layers)
        if is_plugin_layer(layer) and layer.metadata.get("widget") == widget and layer.metadata.get("source") == source
    ]
    for _, layer in reversed(old):  # before adding: the new layers get the same names, not "name [1]"
        viewer.layers.remove(layer)
    added: list = []
    try:
        for layer in new:
            added.append(viewer.add_layer(layer))
    except Exception:
        for layer in added:
            if any(layer is lyr for lyr in viewer.layers):
                viewer.layers.remove(layer)
        for i, layer in old:
            viewer.layers.insert(min(i, len(viewer.layers)), layer)
        raise
    return added
