"""Localisation of several methods over many images, and the whole job from a model file and two folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from ..errors import GradCamError, ImageError, LayerError
from ..generators import run_to_end
from .curves import deletion_insertion
from .folders import _folder_label, load_masks_folder, read_mask
from .metrics import localisation_scores, scaled_tolerance
from .report import LocalisationReport, LocalisationRow

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def _fit_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> tuple[np.ndarray, bool]:
    """(the mask at the image's size, whether it was resized): resized (nearest neighbour) when
    only the resolution differs (same aspect ratio within 1%)."""
    if mask.shape == shape:
        return mask, False
    if mask.ndim == 2 and abs(mask.shape[0] / mask.shape[1] - shape[0] / shape[1]) <= 0.01 * shape[0] / shape[1]:
        from skimage.transform import resize

        return resize(mask, shape, order=0, preserve_range=True, anti_aliasing=False).astype(bool), True
    raise ImageError(f"The mask of {name} has shape {mask.shape}, which does not fit its image {shape}.")


def _as_image(item: Any) -> np.ndarray:
    if isinstance(item, (str, Path)):
        from ..data import read_image

        return read_image(item)
    return np.asarray(item)


def _as_mask(item: Any) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return read_mask(item)
    m = np.asarray(item)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., :3].any(axis=-1)
    return m != 0 if m.dtype != bool else m


def _method_available(bundle: "ModelBundle", method: str) -> str | None:
    """None if ``method`` works for the bundle, else the reason (one sentence)."""
    if method == "cam":
        from ..engine.methods.cam import cam_head

        try:
            cam_head(bundle)
        except LayerError as e:
            return str(e)
    return None


def iter_evaluate_localisation(
    bundle: "ModelBundle",
    images: Sequence[Any],
    masks: Sequence[Any],
    methods: Sequence[str] = ("cam", "gradcam", "gradcam++"),
    target: str = "label",
    labels: "Sequence[int | str | None] | None" = None,
    curves: bool = False,
    tolerance: float = 0,
    tolerance_at: float | None = None,
    level: float = 0.5,
    steps: int = 20,
    baseline: str = "blur",
    names: Sequence[str] | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    shifts: int = 1,
    bootstrap: int = 1000,
    seed: int = 0,
    group_pattern: "str | None" = "auto",
) -> Generator[tuple[int, int], None, LocalisationReport]:
    """:func:`evaluate_localisation` as a generator: yields ``(done, total)`` after each image and
    returns the :class:`LocalisationReport` (``report = yield from ...``, or a napari
    ``thread_worker``'s ``returned`` signal).  Stopping the generator stops the work."""
    from ..preprocess import check_image

    tolerance, level, steps, batch_size, shifts = _check_scoring(
        tolerance, tolerance_at, level, steps, batch_size, shifts, bootstrap, seed)
    target = _check_pairs(images, masks, names, labels, target)
    report, usable = _new_report(bundle, methods, len(images), {
        "target": target, "tolerance": tolerance, "tolerance_at": tolerance_at, "level": level,
        "curves": bool(curves), "shifts": shifts, **({"steps": int(steps), "baseline": baseline} if curves else {})})
    total = len(images)
    resized = 0
    sides: set[int] = set()
    yield 0, total
    for i in range(total):
        name = _image_name(images, names, i)
        mask = _as_mask(masks[i])
        if not mask.any():
            report.n_empty += 1
            yield i + 1, total
            continue
        img = check_image(_as_image(images[i]))
        mask, was_resized = _fit_mask(mask, img.shape[:2], name)
        resized += was_resized
        sides.add(max(img.shape[:2]))
        label = labels[i] if labels is not None else None
        source = "label" if target == "label" and label is not None else "predicted"
        tgt = None if source == "predicted" else bundle.class_index(label)
        scoring = dict(tolerance=scaled_tolerance(tolerance, img.shape[:2], tolerance_at), level=level,
                       curves=curves, steps=steps, baseline=baseline, batch_size=batch_size)
        for m in usable:
            hm, metrics = _score_one(bundle, img, mask, m, tgt, layer if m != "cam" else None, shifts, **scoring)
            report.rows.append(LocalisationRow(name, m, hm.target, source, metrics))
        yield i + 1, total
    report.notes.extend(_closing_notes(resized, report.n_empty == total, tolerance, tolerance_at, sides))
    _add_bootstrap_settings(report, bootstrap, seed, group_pattern)
    return report


def _check_scoring(tolerance, tolerance_at, level, steps, batch_size, shifts, bootstrap, seed) -> tuple:
    """The scoring arguments checked before any work: (tolerance, level, steps, batch_size, shifts)."""
    from ..engine.shifts import check_shifts
    from ..stats import Bootstrap
    from ..validate import check_int, check_number

    shifts = check_shifts(shifts)
    Bootstrap(bootstrap, seed)  # checked before the work
    tolerance = check_number(tolerance, "tolerance", 0)
    if not (isinstance(level, str) and level.lower() == "otsu"):
        level = check_number(level, "level", 0, 1)
    steps, batch_size = check_int(steps, "steps", 1), check_int(batch_size, "batch_size", 1)
    if tolerance_at is not None and not tolerance_at > 0:
        raise GradCamError(f"The size at which the pointing tolerance is given must be > 0 pixels, not {tolerance_at}.")
    return tolerance, level, steps, batch_size, shifts


def _new_report(bundle: "ModelBundle", methods: Sequence[str], n_images: int,
                settings: dict) -> tuple[LocalisationReport, list[str]]:
    """An empty report (the model, its classes and ``settings``) and the methods the model can compute."""
    usable, notes = _usable_methods(bundle, methods)
    report = LocalisationReport(methods=usable, n_images=n_images, notes=notes,
                                settings={"model": bundle.architecture, "classes": list(bundle.classes), **settings})
    return report, usable


def _image_name(images: Sequence[Any], names: Sequence[str] | None, i: int) -> str:
    """The name of image ``i`` in the report: given, its path, or ``image_NNNN``."""
    if names is not None:
        return str(names[i])
    return str(images[i]) if isinstance(images[i], (str, Path)) else f"image_{i:04d}"


def _add_bootstrap_settings(report: LocalisationReport, bootstrap: int, seed: int, group_pattern) -> None:
    """The bootstrap's settings (resamples, seed, groups) in ``report.settings`` when it has rows."""
    if bootstrap and report.rows:
        from ..stats import bootstrap_settings

        report.settings["bootstrap"] = bootstrap_settings([r.name for r in report.rows], bootstrap, seed,
                                                          group_pattern=group_pattern)


def _check_pairs(images, masks, names, labels, target: str) -> str:
    """The target ("label" | "predicted"), checked with the lengths of images, masks, names and labels."""
    if len(images) != len(masks):
        raise GradCamError(f"{len(images)} images but {len(masks)} masks were given; they must pair up.")
    if names is not None and len(names) != len(images):
        raise GradCamError(f"{len(images)} images but {len(names)} names were given.")
    target = str(target).lower()
    if target not in ("label", "predicted"):
        raise GradCamError(f"Unknown target {target!r}; use 'label' (the true class) or 'predicted'.")
    if target == "label":
        if labels is None:
            raise GradCamError("Explaining the true class needs labels; pass labels or use target='predicted'.")
        if len(labels) != len(images):
            raise GradCamError(f"{len(images)} images but {len(labels)} labels were given.")
    return target


def _usable_methods(bundle: "ModelBundle", methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """The methods (canonical names, each once) this model can compute, and a note for each skipped one."""
    from ..engine.methods import canonical_method

    wanted = list(dict.fromkeys(canonical_method(m) for m in methods))
    if not wanted:
        raise GradCamError("No explanation method was given; choose cam, gradcam or gradcam++.")
    usable, notes = [], []
    for m in wanted:
        reason = _method_available(bundle, m)
        if reason is None:
            usable.append(m)
        else:
            notes.append(f"{m} was skipped: {reason}")
    return usable, notes


def _score_one(bundle: "ModelBundle", img: np.ndarray, mask: np.ndarray, method: str, target, layer, shifts: int,
               tolerance: float, level, curves: bool, steps: int, baseline: str, batch_size: int):
    """One image's heatmap by ``method`` and its scores against ``mask`` (dict; with the deletion and
    insertion AUC when ``curves``)."""
    from ..engine import explain

    hm = explain(bundle, img, method=method, target=target, layer=layer, shifts=shifts)
    metrics: dict[str, Any] = localisation_scores(hm.data, mask, tolerance=tolerance, level=level)
    metrics["score"] = float(hm.score)
    if curves:
        di = deletion_insertion(bundle, img, hm.data, hm.target_index, steps=steps, baseline=baseline,
                                batch_size=batch_size)
        metrics["deletion_auc"] = di["deletion_auc"]
        metrics["insertion_auc"] = di["insertion_auc"]
    return hm, metrics


def _closing_notes(resized: int, all_empty: bool, tolerance: float, tolerance_at, sides: set[int]) -> list[str]:
    """The report's notes on resized masks, an all-empty set and the scaled tolerance."""
    notes = []
    if resized:
        notes.append(f"{resized} mask(s) of another resolution were resized (nearest neighbour) to their image's size.")
    if all_empty:
        notes.append("Every mask was empty, so nothing was scored; localisation needs lesion masks.")
    if tolerance and tolerance_at and sides:
        notes.append(_tolerance_note(tolerance, tolerance_at, sides))
    return notes


def _tolerance_note(tolerance: float, at: float, sides: set[int]) -> str:
    """One sentence: the tolerance as given and as applied to the images' sizes."""
    shown = sorted(sides)
    applied = ", ".join(f"{tolerance * s / at:.1f} px at {s} px" for s in shown[:3])
    more = f" (and {len(shown) - 3} other sizes)" if len(shown) > 3 else ""
    return (f"The pointing tolerance of {tolerance:g} px is given at {at:g} px (as Zhang et al. define it) and "
            f"scaled to each image's larger side: {applied}{more}.")


def evaluate_localisation(
    bundle: "ModelBundle",
    images: Sequence[Any],
    masks: Sequence[Any],
    methods: Sequence[str] = ("cam", "gradcam", "gradcam++"),
    target: str = "label",
    labels: "Sequence[int | str | None] | None" = None,
    curves: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    **kwargs: Any,
) -> LocalisationReport:
    """Localisation metrics of several explanation methods over many images.

    Parameters
    ----------
    bundle : ModelBundle
    images : sequence of (H, W) / (H, W, 3|4) arrays or image file paths (read one at a time)
    masks : sequence of (H, W) bool/label arrays or label-image paths (nonzero = lesion), one per
        image.  An image with an empty mask (e.g. a normal one) is skipped and counted in
        ``report.n_empty``.  A mask at another resolution with the same aspect ratio is resized
        (nearest neighbour) to its image.
    methods : any of "cam", "gradcam", "gradcam++".  A method the model does not support (CAM
        without a GAP + linear head, e.g. VGG) is skipped with a note.
    target : "label" (explain the true class, from ``labels``) or "predicted".  With "label", an
        image whose label is None is explained for its predicted class (``target_source`` says so).
    labels : sequence of class names or indices (or None), one per image.
    curves : also compute deletion/insertion AUCs (2 * (steps + 1) forward passes per method and image).
    progress : callable(done, total), called after each image.
    **kwargs : tolerance (pointing-game pixels, default 0), tolerance_at (None: ``tolerance`` is in each
        image's pixels; a size S: it is given at S px and scaled to ``tolerance * max(H, W) / S``),
        level (fixed threshold, default 0.5), steps (20), baseline ("blur"), names (one per image),
        layer (Grad-CAM layer), batch_size, shifts (1; k > 1 averages k x k sub-cell shifts, see
        :func:`napari_gradcam.engine`), bootstrap (resamples of the 95 % interval of every mean, default
        1000; 0: none), seed (0), group_pattern (how image names give patients, who are resampled
        whole: ``"auto"``, Kermany names, as the trainer's split; None: every image on its own).

    Returns
    -------
    LocalisationReport
    """
    gen = iter_evaluate_localisation(bundle, images, masks, methods, target, labels, curves, **kwargs)
    return run_to_end(gen, None if progress is None else lambda step: progress(*step))

def localize_folder(
    model: "str | Path | ModelBundle",
    images_dir: "str | Path",
    masks_dir: "str | Path",
    methods: "Sequence[str] | str" = ("cam", "gradcam", "gradcam++"),
    json_path: "str | Path | None" = None,
    curves: bool = False,
    target: str = "label",
    progress: Callable[[int, int], Any] | None = None,
    device: str = "auto",
    tolerance_at: float | None = 224,
    **kwargs: Any,
) -> LocalisationReport:
    """Localisation metrics of a model's explanations over a folder of images and one of masks.

    The whole job of ``napari-gradcam localize MODEL IMAGES MASKS``: load the model (a path or a
    ModelBundle), pair images with masks (:func:`load_masks_folder`), take each image's true class
    from its class subfolder (``images/pneumonia/x.png``; an image outside a folder named after one
    of the model's classes is explained for its predicted class), run
    :func:`evaluate_localisation`, and write ``json_path`` if given.

    Parameters
    ----------
    model : path of a model file, or a ModelBundle
    images_dir, masks_dir : folders (see :func:`load_masks_folder`)
    methods : a method name or several (any of ``list_methods()``)
    json_path : where to write the report as JSON (optional)
    curves : also compute deletion/insertion AUCs (slower)
    target : "label" or "predicted"
    progress : callable(done, total)
    device : for loading a model file ("auto", "cpu", "cuda", ...)
    tolerance_at : the pointing tolerance (``tolerance=``, pixels) is given at this image size and scaled
        to each image's larger side (default 224, where Zhang et al. define their 15 px); None: pixels as is
    **kwargs : tolerance, level, steps, baseline, layer, batch_size, bootstrap, seed, group_pattern (see
        :func:`evaluate_localisation`)

    Returns
    -------
    LocalisationReport
        Unmatched images are listed in its notes.
    """
    bundle = _as_bundle(model, device)
    if isinstance(methods, str):
        methods = [s for s in methods.replace(",", " ").split() if s]
    pairs = load_masks_folder(images_dir, masks_dir)
    root = Path(images_dir)
    labels = [_folder_label(root, img, bundle.classes) for img, _ in pairs]
    names = [img.relative_to(root).as_posix() for img, _ in pairs]
    report = evaluate_localisation(
        bundle, [p for p, _ in pairs], [m for _, m in pairs], methods=methods, target=target,
        labels=labels, curves=curves, progress=progress, names=names, tolerance_at=tolerance_at, **kwargs,
    )
    report.notes.extend(_folder_notes(pairs.unmatched, root, labels if target == "label" else []))
    report.settings.update({"images_dir": str(images_dir), "masks_dir": str(masks_dir),
                            "n_unmatched": len(pairs.unmatched)})
    if isinstance(model, (str, Path)):
        report.settings["model_path"] = str(model)
    if json_path is not None:
        report.to_json(json_path)
    return report


def _as_bundle(model: "str | Path | ModelBundle", device: str) -> "ModelBundle":
    """The model: loaded from a path (on ``device``), or the given ModelBundle."""
    if isinstance(model, (str, Path)):
        from ..bundle import load_model

        return load_model(model, device=device)
    return model


def _folder_notes(unmatched: Sequence[Path], root: Path, labels: Sequence[Any]) -> list[str]:
    """The report's notes on images without a mask (under ``root``) and on images without a class folder
    (``labels`` None; pass no labels when the predicted class is explained anyway)."""
    notes = []
    if unmatched:
        from ..errors import shown as escaped

        shown = ", ".join(escaped(p.relative_to(root).as_posix()) for p in unmatched[:5])
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        notes.append(f"{len(unmatched)} image(s) had no mask and were left out: {shown}{more}.")
    if any(lab is None for lab in labels):
        n = sum(lab is None for lab in labels)
        notes.append(f"{n} image(s) are not in a subfolder named after a class, so their predicted "
                     "class was explained.")
    return notes
