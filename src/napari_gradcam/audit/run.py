"""``iter_audit`` (a generator of progress events, like training) and ``audit`` (run to the end)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generator

import numpy as np

from ..errors import DatasetError, OutputError, shown
from .findings import ConfirmSettings, build_table, class_stats, cluster_classes, confirm_cluster
from .maps import MapStore, PassSettings, pass_fingerprint, run_pass
from .result import Audit
from .shares import evidence_box
from .sources import AuditSource, open_source

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

STAGES = ("start", "explain", "cluster", "confirm", "write", "done")


@dataclass
class AuditEvent:
    """One step of an audit: ``kind`` one of :data:`STAGES`; ``done`` of ``total`` units of that stage
    (images, classes, clusters); ``message`` says what happens."""

    kind: str
    done: int = 0
    total: int = 0
    message: str = ""

    @property
    def progress(self) -> float:
        """Fraction of this stage done, in [0, 1]."""
        return 1.0 if self.kind == "done" else (self.done / self.total if self.total else 0.0)


def _bundle(model) -> "ModelBundle":
    from ..bundle import ModelBundle, load_model
    from ..validate import check_bundle

    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    check_bundle(bundle, "audit")
    return bundle


def _check_channels(bundle: "ModelBundle", source: AuditSource) -> None:
    """One sentence when the images are in colour and the model reads one channel (the first readable image)."""
    from ..errors import GradCamError

    for i in range(min(len(source), 20)):
        try:
            img = source.read(i)
        except GradCamError:
            continue
        if img.ndim == 3 and bundle.config.in_channels == 1:
            rgb = img[..., :3].astype(np.float32)
            if np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > 0.02 * max(float(rgb.max()), 1e-6):
                raise DatasetError(f"The model reads one channel (grayscale) but {shown(source.entries[i].key)} "
                                   "is a colour image; audit it with a model trained on colour images.")
        return


def _attach_masks(src: AuditSource, masks) -> str | None:
    """Check ``masks`` (a folder, or for in-memory images a stack of one mask per image, e.g. a Labels
    layer's data) and attach a stack to ``src``; returns what the pass records (the folder, or
    ``"arrays:<sha256>"``)."""
    import hashlib

    if masks is None:
        return None
    if isinstance(masks, (str, Path)):
        if not Path(masks).is_dir():
            raise DatasetError(f"No masks folder at {shown(masks)}.")
        return str(masks)
    if src.arrays is None:
        raise DatasetError("Masks for images read from files are a folder with the images' relative names.")
    if len(masks) != len(src):
        raise DatasetError(f"{len(masks)} masks were given for {len(src)} images; give one mask per image.")
    src.masks = masks
    h = hashlib.sha256()
    for i in range(len(masks)):
        h.update(np.ascontiguousarray(np.asarray(masks[i]) > 0).tobytes())
    return f"arrays:{h.hexdigest()}"


def _work_folder(out: Path | None, resume: bool, overwrite: bool) -> Path:
    """Where the pass's store lives while it runs: beside ``out`` (kept for --resume) or a temporary folder."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="napari-gradcam-audit-"))
    work = out.parent / f".{out.name}.partial"
    if out.exists() and not (resume or overwrite):
        raise OutputError(f"{shown(out)} exists; pass --resume to continue or reuse it, or --overwrite to replace it.")
    if (work / "maps.zarr").exists() and not (resume or overwrite):
        raise OutputError(f"An interrupted audit of {shown(out)} is in {shown(work)}; pass --resume to continue it "
                          "or --overwrite to start again.")
    if overwrite and work.exists():
        shutil.rmtree(work)
    if resume and not (work / "maps.zarr").exists() and (out / "maps.zarr").is_dir():
        shutil.copytree(out / "maps.zarr", work / "maps.zarr")
    work.mkdir(parents=True, exist_ok=True)
    return work


def _client(workers: int | None, scheduler: str | None):
    """A dask.distributed client: a LocalCluster of ``workers`` processes or the scheduler at ``scheduler``."""
    if not workers and not scheduler:
        return None, None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DatasetError("Running on several processes needs the distributed package "
                           "(pip install distributed).") from None

    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def iter_audit(model, source, *, method: str = "gradcam", layer=None, masks=None, labels=None, out=None,
               resume: bool = False, overwrite: bool = False, batch_size: int = 32, max_clusters: int = 8,
               grid: int = 32, cells: int = 4, frame: float = 0.1, confirm: bool = True,
               confirm_settings: ConfirmSettings | None = None, workers: int | None = None,
               scheduler: str | None = None, seed: int = 0,
               model_name: str | None = None) -> Generator[AuditEvent, None, Audit]:
    """Audit a data set step by step: ``audit = yield from iter_audit(...)``; see :func:`audit`."""
    from ..engine.layer_choice import resolve_layers
    from ..engine.methods import get_method
    from ..validate import check_int

    bundle = _bundle(model)
    spec = get_method(method)
    layers = tuple(resolve_layers(bundle, spec, layer))
    batch_size = check_int(batch_size, "batch_size", 1)
    max_clusters = check_int(max_clusters, "max_clusters", 1)
    src = open_source(source, bundle.classes, labels)
    mask_key = _attach_masks(src, masks)
    _check_channels(bundle, src)
    settings = PassSettings(spec.name, layers, grid, cells, frame, mask_key)
    out = Path(out) if out is not None else None
    work = _work_folder(out, resume, overwrite)
    store = MapStore(work / "maps.zarr", len(src), bundle.n_classes, settings,
                     pass_fingerprint(bundle, src, settings), resume=resume)
    yield AuditEvent("start", 0, len(src), f"auditing {len(src)} image(s) of {shown(src.description)} with "
                                           f"{spec.title} at {'+'.join(layers) or 'the input'}")
    client, cluster = _client(workers, scheduler)
    try:
        for done, total in run_pass(bundle, src, settings, store, batch_size, client):
            yield AuditEvent("explain", done, total, "explaining")
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    result = yield from _analyse(bundle, src, store, settings, max_clusters, confirm,
                                 confirm_settings or ConfirmSettings(), seed)
    result.findings["model"] = model_name or (str(model) if isinstance(model, (str, Path))
                                              else bundle.config.architecture)
    if out is not None:
        yield AuditEvent("write", 0, 1, f"writing {shown(out)}")
        result.save(out)
        shutil.rmtree(work, ignore_errors=True)
    yield AuditEvent("done", 1, 1, _summary(result))
    return result


def _analyse(bundle, src: AuditSource, store: MapStore, settings: PassSettings, max_clusters: int,
             confirm: bool, cs: ConfirmSettings, seed: int):
    classes = list(bundle.classes)
    table = build_table(src, classes, store, settings)
    grid = store.group["grid"][:]
    clusters, class_means, embedding = [], np.zeros((len(classes), *grid.shape[1:]), np.float32), \
        np.full((len(table), 2), np.nan, np.float32)
    for k, found, mean, emb in cluster_classes(table, classes, grid, max_clusters, seed):
        clusters += found
        class_means[k] = mean
        embedding[emb[:, 0].astype(int)] = emb[:, 1:]
        yield AuditEvent("cluster", k + 1, len(classes), f"clustered {classes[k]}: {len(found)} strategies")
    for j, c in enumerate(clusters):
        if confirm:
            confirm_cluster(bundle, src, table, c, cs)
        else:
            c.update(removal=None, insertion=None, verdict="not tested", reason="confirmation was switched off")
        yield AuditEvent("confirm", j + 1, len(clusters), f"tested cluster {c['id']} ({c['class']})")
    _store_means(store, class_means, clusters, embedding)
    stats = class_stats(table, classes)
    for k, c in enumerate(classes):  # where the class's mean map concentrates, and how much
        if stats[c]["n"]:
            stats[c].update(box=evidence_box(class_means[k]), peak_cell_share=float(class_means[k].max()))
    order = sorted(clusters, key=lambda c: (c["verdict"] != "likely shortcut", -c["distance_from_main"]))
    findings = {"version": 1, "model": bundle.config.architecture, "method": settings.method,
                "layer": "+".join(settings.layers) or "input", "classes": classes, "source": src.description,
                "class_stats": stats,
                "clusters": [{k: v for k, v in c.items() if not k.startswith("_")} for c in order],
                "skipped": [{"path": p, "reason": r} for p, r in src.skipped]
                + [{"path": p, "reason": s} for p, s in zip(table["path"], table["status"]) if s != "ok"]}
    return Audit(table, findings, store.path, src.arrays)


def _store_means(store: MapStore, class_means, clusters, embedding) -> None:
    g = store.group
    means = np.stack([c["_mean"] for c in clusters]) if clusters else np.zeros((0, *class_means.shape[1:]), np.float32)
    for name, arr in (("class_means", class_means), ("cluster_means", means.astype(np.float32)),
                      ("embedding", embedding)):
        g.create_array(name, shape=arr.shape, dtype="float32", overwrite=True)[...] = arr


def _summary(a: Audit) -> str:
    n_ok = int((a.table["status"] == "ok").sum())
    short = a.shortcuts
    text = f"{n_ok} image(s) explained, {len(a.clusters)} strategies, {len(short)} likely shortcut(s)"
    return text + "".join(f"; cluster {c['id']} ({c['class']}, {c['size']} images): {c['reason']}" for c in short)


def audit(model, source, *, method: str = "gradcam", layer=None, masks=None, **options) -> Audit:
    """Audit a data set: where the model looks, which strategies it uses, which of them are shortcuts.

    Parameters
    ----------
    model : ModelBundle or a model file.
    source : a folder (class subfolders named like the model's classes give labels; a flat folder has
        none), a CSV of ``path[,label]`` rows, or a list / (N, H, W[, C]) stack of arrays (``labels=``).
    method, layer : the explanation (any CAM-family or attribution method; default the model's layer).
    masks : a folder of masks with the images' relative names (the share of evidence outside them), or
        for in-memory images a stack of one mask per image (a Labels layer's data).
    options : out (write the audit folder there), resume, overwrite, batch_size, max_clusters, grid, cells,
        frame, confirm, confirm_settings (:class:`~.findings.ConfirmSettings`), workers / scheduler
        (dask.distributed), seed, labels, model_name (for the report).  See :func:`iter_audit`.

    Returns
    -------
    Audit
    """
    from ..generators import run_to_end

    return run_to_end(iter_audit(model, source, method=method, layer=layer, masks=masks, **options))
