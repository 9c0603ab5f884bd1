"""The explanation pass: many images per forward/backward pass, the predicted class's map and the label's
map at the layer's own grid, the predicted map resampled to one common grid with its evidence shares,
streamed batch by batch to a zarr store (``maps.zarr``) so that no more than one batch of images is ever
in memory and an interrupted pass resumes where it stopped.

:func:`explain_batch` is the one place that calls the engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import GradCamError
from .shares import cell_shares, frame_share, normalise_sum, outside_share
from .sources import AuditSource, read_mask

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle

#: The arrays of the store, in the order written.
ARRAYS = ("probs", "layer_maps", "grid", "frame", "cells", "outside", "state")


@dataclass(frozen=True)
class PassSettings:
    """What the pass computes.  method, layers: the engine's (canonical name, dotted layer names);
    grid: side of the common grid G; cells: side of the coarse share grid (G a multiple of it);
    frame: the frame's share of the image side; masks: a folder of masks (same relative names),
    ``"arrays:<sha256>"`` for the stack attached to the source, or None."""

    method: str
    layers: tuple[str, ...]
    grid: int = 32
    cells: int = 4
    frame: float = 0.1
    masks: str | None = None


def explain_batch(bundle: "ModelBundle", x: "torch.Tensor", labels: Sequence[int | None], method: str,
                  layers: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The engine adapter: logits and two maps per image from one batched computation.

    Parameters
    ----------
    x : (B, C, S, S) float32 network input on the model's device.
    labels : per image, its class index or None (unknown).

    Returns
    -------
    logits : (B, K) float32
    maps : (B, 2, h, w) float32 >= 0 at the layer's grid: [:, 0] the predicted class's map, [:, 1] the
        label's map (the predicted class's where the label is unknown).
    """
    import torch

    from ..engine.pipeline import check_finite_output as check_output
    from ..engine.methods import get_method

    spec = get_method(method)
    pred = {}

    def predicted(z):
        pred["idx"] = z.argmax(dim=1)
        return z.gather(1, pred["idx"][:, None])[:, 0]

    def labelled(z):
        idx = pred["idx"] if "idx" in pred else z.argmax(dim=1)
        known = torch.tensor([-1 if lab is None else int(lab) for lab in labels], device=z.device)
        return z.gather(1, torch.where(known >= 0, known, idx)[:, None])[:, 0]

    if spec.score_functions:  # one pass, each image's own classes
        out = spec.compute(bundle, x, [predicted, labelled], list(layers))
        check_output(bundle, out, spec.name, "+".join(layers) or None, x)
        return out.logits.float(), out.maps.float().relu()
    out = spec.compute(bundle, x, list(range(bundle.n_classes)), list(layers))  # every class, then pick
    check_output(bundle, out, spec.name, "+".join(layers) or None, x)
    logits = out.logits.float()
    top = logits.argmax(dim=1)
    lab = torch.tensor([-1 if v is None else int(v) for v in labels], device=top.device)
    lab = torch.where(lab >= 0, lab, top)
    rows = torch.arange(len(x), device=top.device)
    return logits, torch.stack([out.maps[rows, top], out.maps[rows, lab]], dim=1).float().relu()


@dataclass
class BatchResult:
    """The pass's output for the images ``indices`` (b of them); failed images have NaN probabilities,
    zero maps and their reason in ``status``."""

    indices: np.ndarray
    probs: np.ndarray  # (b, K) float32
    layer_maps: np.ndarray  # (b, 2, h, w) float32
    grid: np.ndarray  # (b, G, G) float32, each summing to 1 (0 for failed images)
    frame: np.ndarray  # (b,) float32
    cells: np.ndarray  # (b, c, c) float32
    outside: np.ndarray  # (b,) float32, NaN without masks
    status: list[str] = field(default_factory=list)
    sizes: np.ndarray | None = None  # (b, 2) int64 image heights and widths (0 for failed images)


def _read_batch(source: AuditSource, indices, settings: PassSettings):
    """(images read, their positions in ``indices``, masks, status per index)."""
    from ..preprocess import check_image

    images, ok, masks, status = [], [], [], []
    for j, i in enumerate(indices):
        try:
            img = check_image(source.read(int(i)))
            mask = None
            if source.masks is not None:
                mask = read_mask(source.masks, None, img.shape[:2], int(i))
            elif settings.masks is not None:
                mask = read_mask(settings.masks, source.entries[int(i)].rel, img.shape[:2])
        except GradCamError as e:
            status.append(str(e).rstrip(".") or type(e).__name__)
            continue
        images.append(img)
        masks.append(mask)
        ok.append(j)
        status.append("ok")
    return images, ok, masks, status


def process_batch(bundle: "ModelBundle", source: AuditSource, indices: Sequence[int],
                  settings: PassSettings) -> BatchResult:
    """Read, explain and measure the images ``indices`` of ``source`` (one engine computation)."""
    import torch

    from ..preprocess import bundle_tensor, resize_maps

    indices = np.asarray(indices, dtype=np.int64)
    b, g, k = len(indices), settings.grid, bundle.n_classes
    images, ok, masks, status = _read_batch(source, indices, settings)
    probs = np.full((b, k), np.nan, np.float32)
    grid = np.zeros((b, g, g), np.float32)
    outside = np.full(b, np.nan, np.float32)
    layer_maps = None
    sizes = np.zeros((b, 2), np.int64)
    if images:
        sizes[ok] = [im.shape[:2] for im in images]
        x = bundle_tensor(bundle, images).to(bundle.device)
        labels = [source.entries[int(indices[j])].label for j in ok]
        bundle.model.eval()
        logits, maps = explain_batch(bundle, x, labels, settings.method, settings.layers)
        probs[ok] = torch.softmax(logits, dim=1).cpu().numpy()
        layer_maps = np.zeros((b, 2, *maps.shape[-2:]), np.float32)
        layer_maps[ok] = maps.cpu().numpy()
        grid[ok] = normalise_sum(resize_maps(maps[:, 0], (g, g)).cpu().numpy())
        for j, mask in zip(ok, masks):
            if mask is not None:
                outside[j] = outside_share(grid[j], mask)
    return BatchResult(indices, probs, layer_maps, grid, frame_share(grid, settings.frame),
                       cell_shares(grid, settings.cells), outside, status, sizes)


def model_fingerprint(bundle: "ModelBundle") -> str:
    """sha256 of the model's classes, input settings and weights (what makes two passes comparable)."""
    h = hashlib.sha256(json.dumps([list(bundle.classes), bundle.config.input_size, bundle.config.in_channels,
                                   list(bundle.config.mean), list(bundle.config.std)]).encode())
    for name, t in bundle.model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pass_fingerprint(bundle: "ModelBundle", source: AuditSource, settings: PassSettings) -> str:
    """sha256 of the model, the settings and the list of images."""
    h = hashlib.sha256(model_fingerprint(bundle).encode())
    h.update(json.dumps(asdict(settings)).encode())
    for e in source.entries:
        h.update(f"{e.key}\t{e.label}\n".encode())
    return h.hexdigest()


class MapStore:
    """The zarr store of a pass: one row per image; ``state`` 0 = to do, 1 = done, 2 = skipped.

    Reasons of skipped images are kept in the group's attributes (``reasons``: {index: sentence}).
    """

    def __init__(self, path: "str | Path", n: int, n_classes: int, settings: PassSettings, fingerprint: str,
                 resume: bool = False) -> None:
        import zarr

        self.path = Path(path)
        self.n, self.settings = n, settings
        if resume and (self.path / "zarr.json").is_file():
            self.group = zarr.open_group(str(self.path), mode="a")
            if self.group.attrs.get("fingerprint") != fingerprint:
                raise GradCamError(f"The partial audit in {self.path} was made with another model, images or "
                                   "settings; start again with --overwrite.")
            return
        self.group = zarr.open_group(str(self.path), mode="w")
        self.group.attrs.update({"fingerprint": fingerprint, "settings": asdict(settings), "reasons": {}})
        g, c = settings.grid, settings.cells
        chunk = 256
        for name, shape, fill in (("probs", (n, n_classes), np.nan), ("grid", (n, g, g), 0.0),
                                  ("frame", (n,), np.nan), ("cells", (n, c, c), np.nan),
                                  ("outside", (n,), np.nan)):
            self.group.create_array(name, shape=shape, chunks=(chunk, *shape[1:]), dtype="float32", fill_value=fill)
        self.group.create_array("state", shape=(n,), chunks=(max(n, 1),), dtype="uint8", fill_value=0)

    def done(self) -> np.ndarray:
        """(N,) bool: rows already written."""
        return self.group["state"][:] > 0

    def write(self, r: BatchResult) -> None:
        """Store one batch's results (the ``state`` last, so an interrupted write is redone on resume)."""
        idx = r.indices
        lo, hi = int(idx.min()), int(idx.max()) + 1
        contiguous = hi - lo == len(idx) and np.all(np.diff(idx) == 1)
        if r.layer_maps is not None and "layer_maps" not in self.group:
            shape = (self.n, 2, *r.layer_maps.shape[-2:])
            self.group.create_array("layer_maps", shape=shape, chunks=(64, *shape[1:]), dtype="float32",
                                    fill_value=0.0)
        for name in ARRAYS[:-1]:
            value = getattr(r, name)
            if value is None:
                continue
            if contiguous:
                self.group[name][lo:hi] = value
            else:
                for j, i in enumerate(idx):
                    self.group[name][int(i)] = value[j]
        failed = {str(int(i)): s for i, s in zip(idx, r.status) if s != "ok"}
        if failed:
            self.group.attrs["reasons"] = {**self.group.attrs.get("reasons", {}), **failed}
        state = self.group["state"]
        row = state[:]
        row[idx] = [1 if s == "ok" else 2 for s in r.status]
        state[:] = row

    def reasons(self) -> dict[int, str]:
        return {int(k): v for k, v in self.group.attrs.get("reasons", {}).items()}


def batches_to_do(done: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The fixed batches (``[k*batch_size, (k+1)*batch_size)``) with rows not yet done, their undone rows."""
    out = []
    for lo in range(0, len(done), batch_size):
        rows = np.nonzero(~done[lo:lo + batch_size])[0] + lo
        if len(rows):
            out.append(rows)
    return out


def run_pass(bundle: "ModelBundle", source: AuditSource, settings: PassSettings, store: MapStore,
             batch_size: int, client=None) -> Iterator[tuple[int, int]]:
    """Explain every image not yet in ``store``; yields (images done, total) after each batch.  With a
    dask.distributed ``client`` the batches run on its workers (the same batches, the same results)."""
    done = store.done()
    total, n_done = len(done), int(done.sum())
    todo = batches_to_do(done, batch_size)
    yield n_done, total
    if client is None:
        for rows in todo:
            store.write(process_batch(bundle, source, rows, settings))
            n_done += len(rows)
            yield n_done, total
        return
    yield from _distributed_pass(bundle, source, settings, store, todo, client, n_done, total)


def _distributed_pass(bundle, source, settings, store, todo, client, n_done, total):
    from distributed import as_completed

    model, src = client.scatter([bundle, source], broadcast=True)
    futures = [client.submit(process_batch, model, src, rows, settings, pure=False) for rows in todo]
    try:
        for fut in as_completed(futures):
            r = fut.result()
            store.write(r)
            n_done += len(r.indices)
            yield n_done, total
    finally:
        client.cancel(futures)
