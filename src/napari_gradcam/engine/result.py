"""Results as plain data: numpy arrays (or dask arrays) and small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


@dataclass
class Heatmap:
    """One explanation of one image.

    Attributes
    ----------
    data : (H, W) float32 in [0, 1], at the image's own size (ReLU'd map divided by its maximum;
        with ``shifts > 1`` the average of the shifted copies' maps).
    raw : (h, w) float32, the map at the layer's resolution before normalisation
        (signed for CAM; ReLU'd for Grad-CAM and Grad-CAM++), of the unshifted input.
    max : float, the maximum of the ReLU'd raw map (0 when the map is empty).
    target, target_index : the explained class.
    score : float, the model's probability for ``target``.
    probabilities : (n_classes,) float32.
    layer : the explained layer (dotted name); several fused layers are joined by "+".
    method : the method's canonical name (see ``list_methods()``).
    shifts : k of the k x k sub-cell shifts averaged into ``data`` (1: none).
    smooth : "" (none), "aug", "eigen" or "aug+eigen" (see ``explain``).
    signed : the map keeps its sign: ``data`` in [-1, 1] (divided by its largest absolute value),
        ``raw`` signed and ``max`` its largest absolute value.

    For ``target`` a function of the logits, ``target`` is "custom", ``target_index`` -1 and ``score``
    the function's value for the image.  ``raw`` of fused layers is the fused map (in [0, 1]) at the
    finest layer's grid.
    """

    data: np.ndarray
    raw: np.ndarray
    max: float
    target: str
    target_index: int
    score: float
    probabilities: np.ndarray
    layer: str
    method: str
    shifts: int = 1
    smooth: str = ""
    signed: bool = False

    @property
    def title(self) -> str:
        from .methods import method_title

        return f"{method_title(self.method)} {self.target}"


@dataclass
class TiledHeatmaps:
    """Per-class heatmaps over a whole (large) image.

    Attributes
    ----------
    heatmaps : (C, H, W) float32 in [0, 1] (numpy, or dask for a dask input or an image too large
        for memory: see ``lazy``). Each tile contributes
        its class probability times its map divided by the tile's maximum, blended across
        overlapping tiles with a smooth window, so values are comparable across tiles and classes.
    probability_maps : (C, H, W) float32, each pixel's class probabilities from ONE tile (mode
        "tiles"): the nearest tile of the chain that covers the image with the least overlap (the
        non-overlapping grid, at every overlap; see :func:`.tiling.chain_starts`), so
        each pixel is counted once; piecewise constant (up to the blending grid's upsampling).  Not
        blended across overlapping tiles: a tile straddling a normal and an abnormal region is called
        abnormal, and a blend would let it eat the normal neighbour.  Mode "fullconv": the softmax of
        the tile-window logits at each position.
    classes : the C class names, in the order of the maps.
    class_indices : their indices in the model's classes.
    tiles : number of tiles run; tile, stride : tile size and step in pixels.
    method, mode : the method's name (``list_methods()``); "tiles" | "fullconv".
    """

    heatmaps: Any
    probability_maps: Any
    classes: list[str]
    class_indices: list[int]
    tiles: int
    tile: int
    stride: int
    method: str
    mode: str
    extra: dict = field(default_factory=dict)

    @property
    def lazy(self) -> bool:
        """True when the maps are dask arrays (computed chunk by chunk on demand)."""
        return _is_dask(self.heatmaps)

    @cached_property
    def dominant(self):
        """(H, W) int8 index into ``classes`` of the most probable class at each pixel (dask if lazy)."""
        return self.probability_maps.argmax(axis=0).astype(np.int8)

    @cached_property
    def probabilities(self) -> dict[str, float]:
        """Mean probability of each class over the image (area-weighted, from ``probability_maps``)."""
        means = self.probability_maps.mean(axis=(1, 2), dtype=np.float64)
        if self.lazy:
            means = means.compute()
        return {c: float(m) for c, m in zip(self.classes, np.asarray(means))}

    @cached_property
    def breakdown(self) -> dict[str, float]:
        """Share of the image's area where each class dominates (the argmax of ``probability_maps``,
        so in mode "tiles" each pixel as its chain tile calls it); the shares sum to 1."""
        return _shares(self._counts(), self.classes)

    def _counts(self):
        if self.lazy:
            import dask.array as da

            return da.bincount(self.dominant.ravel(), minlength=len(self.classes)).compute()
        return np.bincount(self.dominant.ravel(), minlength=len(self.classes))

    def compute(self) -> "TiledHeatmaps":
        """A numpy copy of a lazy result (loads the whole maps into memory)."""
        if not self.lazy:
            return self
        import dask

        heat, prob = dask.compute(self.heatmaps, self.probability_maps)
        return TiledHeatmaps(heat, prob, self.classes, self.class_indices, self.tiles, self.tile, self.stride,
                             self.method, self.mode, dict(self.extra))

    def to_zarr(self, path, dtype="float16") -> "TiledHeatmaps":
        """Store the heatmaps (C, H, W) in a zarr array at ``path`` and compute the breakdown and
        mean probabilities in the SAME pass, chunk by chunk (memory bounded by the chunk size).

        Returns a TiledHeatmaps whose ``heatmaps`` read lazily from the zarr store.  The store is written
        beside ``path`` and moved into place when complete (:func:`~napari_gradcam.outputs.atomic_folder`):
        a failure or an interruption leaves a previous store at ``path`` as it was.
        """
        import dask
        import dask.array as da

        from ..outputs import atomic_folder

        heat = da.asarray(self.heatmaps)
        prob = da.asarray(self.probability_maps)
        counts = da.bincount(prob.argmax(axis=0).astype(np.int8).ravel(), minlength=len(self.classes))
        means = prob.mean(axis=(1, 2), dtype=np.float64)
        computed = {}

        def write(tmp: str) -> None:
            store = heat.astype(dtype).to_zarr(tmp, overwrite=True, compute=False)
            _, computed["counts"], computed["means"] = dask.compute(store, counts, means)

        atomic_folder(path, write)
        counts, means = computed["counts"], computed["means"]
        out = TiledHeatmaps(da.from_zarr(str(path)), prob, self.classes, self.class_indices, self.tiles, self.tile,
                            self.stride, self.method, self.mode, dict(self.extra, zarr=str(path)))
        out.__dict__["breakdown"] = _shares(counts, self.classes)
        out.__dict__["probabilities"] = {c: float(m) for c, m in zip(self.classes, means)}
        return out


def _is_dask(arr) -> bool:
    return type(arr).__module__.startswith("dask")


def _shares(counts, classes: list[str]) -> dict[str, float]:
    counts = np.asarray(counts, dtype=np.float64)
    return {c: float(n / counts.sum()) for c, n in zip(classes, counts)}


@dataclass
class FeatureMaps:
    """The most active channels of one layer for one image.

    maps : (n, h, w) float32 raw activations; channels : (n,) int channel indices;
    scores : (n,) float32 mean activation of each; layer : dotted name.
    """

    maps: np.ndarray
    channels: np.ndarray
    scores: np.ndarray
    layer: str
