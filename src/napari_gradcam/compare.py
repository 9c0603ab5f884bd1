"""Which explanation to trust for one image: every method's map with its faithfulness and a sanity check.

For each method, :func:`compare_methods` computes the heatmap of one class and

* the **deletion** and **insertion** AUC (Petsiuk et al. 2018; :func:`napari_gradcam.localisation.deletion_insertion`):
  the class probability as the pixels the map ranks highest are removed (low is faithful) or inserted
  into a blurred image (high is faithful);
* a **model-randomisation** score (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): the
  Spearman rank correlation between the map of the model and of a copy whose top layers (the last quarter
  of the layers with parameters, in the order the forward pass runs them, so the head is always among
  them) are re-initialised.  A map that barely changes (correlation >= ``sanity_threshold``, default 0.5)
  does not depend on what the model learned, and is flagged.  Signed maps are compared by their absolute
  values, as Adebayo et al. do.

The randomised copy is made once, with a fixed seed; the model itself is not changed.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np

from .errors import GradCamError
from .generators import run_to_end

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .bundle import ModelBundle
    from .engine import Heatmap

#: share of the parameterised layers (counted from the output) re-initialised for the sanity check
RANDOMISED_SHARE = 0.25
#: maps are compared at most this many pixels a side (area-averaged), which keeps the rank correlation quick
SANITY_SIDE = 128


@dataclass
class MethodScore:
    """One method on one image.

    heatmap : the Heatmap of the model (``heatmap.data`` (H, W) float32, [0, 1] or [-1, 1] if signed)
    deletion_auc, insertion_auc : floats in [0, 1] (lower / higher is more faithful)
    randomisation_correlation : Spearman correlation in [-1, 1] with the randomised model's map
        (0 when one of the two maps is constant, NaN when both are)
    model_dependent : False when the map barely changes with the model (correlation >= threshold);
        None when undefined
    seconds : time to compute the map
    """

    method: str
    title: str
    family: str
    signed: bool
    heatmap: "Heatmap"
    deletion_auc: float
    insertion_auc: float
    randomisation_correlation: float
    model_dependent: bool | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The scores (not the map) as JSON-ready data (NaN -> None)."""
        return {"method": self.method, "title": self.title, "family": self.family, "signed": self.signed,
                "layer": self.heatmap.layer, "deletion_auc": _finite(self.deletion_auc),
                "insertion_auc": _finite(self.insertion_auc),
                "randomisation_correlation": _finite(self.randomisation_correlation),
                "model_dependent": self.model_dependent, "seconds": self.seconds}


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


@dataclass
class MethodComparison:
    """Every method's map and scores for one image and one class.

    rows : list of MethodScore, in the order asked; target, target_index : the explained class;
    probability : the model's probability of it; notes : skipped methods and flags, one sentence each;
    settings : steps, baseline, randomised layers, threshold, ...
    """

    rows: list[MethodScore]
    target: str
    target_index: int
    probability: float
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """{method: (H, W) float32 map}."""
        return {r.method: r.heatmap.data for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """Scores, class, notes and settings as JSON-ready data (no maps)."""
        return {"target": self.target, "target_index": self.target_index, "probability": self.probability,
                "methods": [r.to_dict() for r in self.rows], "notes": list(self.notes),
                "settings": dict(self.settings)}

    def to_json(self, path: "str | Path") -> Path:
        """Write :meth:`to_dict` as indented JSON (atomically); returns the path."""
        from .outputs import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self, markdown: bool = False) -> str:
        """One row per method: family, deletion / insertion AUC, randomisation correlation, flag, seconds."""
        header = ["method", "family", "deletion AUC", "insertion AUC", "randomisation corr.", "depends on model",
                  "seconds"]
        body = [[r.title, r.family, _fmt(r.deletion_auc), _fmt(r.insertion_auc), _fmt(r.randomisation_correlation),
                 {True: "yes", False: "NO", None: "-"}[r.model_dependent], f"{r.seconds:.2f}"] for r in self.rows]
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
        else:
            widths = [max(len(header[i]), *(len(row[i]) for row in body)) if body else len(header[i])
                      for i in range(len(header))]
            lines = ["  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row))
                     for row in [header, ["-" * w for w in widths], *body]]
        head = f"class {self.target} (p = {self.probability:.3f}); deletion: lower is better, insertion: higher."
        return "\n".join([head, *lines, *self.notes])

    def __str__(self) -> str:
        return self.table()


def _fmt(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


# ----------------------------------------------------------------------------- sanity check
def parameter_layers(model: "nn.Module", x) -> list[str]:
    """Names of the modules that hold parameters directly, in the order one forward pass of ``x`` runs them."""
    import torch

    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, name=name: order.append(name) if name not in order else None))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def randomised_copy(bundle: "ModelBundle", share: float = RANDOMISED_SHARE,
                    seed: int = 0) -> tuple["ModelBundle", list[str]]:
    """A copy of ``bundle`` whose top ``share`` of parameterised layers are re-initialised.

    Returns the copy and the names of the re-initialised layers (output side first).  Layers without a
    ``reset_parameters`` method get normal noise of their weights' own standard deviation.
    """
    import torch

    from .introspect import get_module
    from .preprocess import bundle_tensor

    model = copy.deepcopy(bundle.model).eval()
    probe = bundle_tensor(bundle, [np.zeros((bundle.input_size, bundle.input_size), np.float32)]).to(bundle.device)
    order = parameter_layers(model, probe)
    if not order:
        raise GradCamError("The model has no layers with parameters, so it cannot be randomised.")
    top = order[-max(1, round(len(order) * share)):][::-1]
    with torch.random.fork_rng(devices=[bundle.device] if bundle.device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for name in top:
            module = get_module(model, name)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0)
    return replace(bundle, model=model), top


def _small(a: np.ndarray) -> np.ndarray:
    """(H, W) -> at most SANITY_SIDE a side, area-averaged, float64."""
    import torch
    import torch.nn.functional as F

    h, w = a.shape
    f = max(1, math.ceil(max(h, w) / SANITY_SIDE))
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.avg_pool2d(t, f, ceil_mode=True)[0, 0].double().numpy() if f > 1 else a.astype(np.float64)


def rank_correlation(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> float:
    """Spearman correlation of two (H, W) maps (of |maps| with ``absolute``).

    A constant map has no ranks: 0 when only one of the two is constant (all its structure is gone),
    NaN when both are.
    """
    from scipy.stats import spearmanr

    x, y = _small(np.asarray(a)), _small(np.asarray(b))
    if absolute:
        x, y = np.abs(x), np.abs(y)
    flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
    if flat_x or flat_y:
        return float("nan") if flat_x and flat_y else 0.0
    return float(spearmanr(x.ravel(), y.ravel())[0])


# ----------------------------------------------------------------------------- the comparison
def default_methods(bundle: "ModelBundle") -> list[str]:
    """Every registered method except the slow ones (Score-CAM, occlusion: one pass per channel / square)."""
    from .engine.methods import get_method, method_names

    return [m for m in method_names() if not get_method(m).extra.get("slow")]


def _resolve(methods: "Sequence[str] | str | None", bundle: "ModelBundle") -> list[str]:
    from .engine.methods import canonical_method, method_names

    if methods is None:
        return default_methods(bundle)
    if isinstance(methods, str):
        methods = method_names() if methods.strip().lower() == "all" else [methods]
    out: list[str] = []
    for m in methods:
        c = canonical_method(m)
        if c not in out:
            out.append(c)
    if not out:
        raise GradCamError("No explanation method was given; `napari-gradcam methods` lists them.")
    return out


def _score(bundle, random_bundle, img, spec, target: int, layer, steps: int, baseline: str, threshold: float):
    from .engine import explain
    from .localisation import deletion_insertion

    t0 = time.perf_counter()
    h = explain(bundle, img, method=spec.name, target=target, layer=layer)
    seconds = time.perf_counter() - t0
    r = explain(random_bundle, img, method=spec.name, target=target, layer=layer)
    curves = deletion_insertion(bundle, img, h.data, target, steps=steps, baseline=baseline)
    corr = rank_correlation(h.data, r.data, absolute=spec.signed)
    dependent = None if not math.isfinite(corr) else bool(corr < threshold)
    return MethodScore(spec.name, spec.title, spec.family, spec.signed, h, curves["deletion_auc"],
                       curves["insertion_auc"], corr, dependent, seconds)


def iter_compare_methods(
    bundle: "ModelBundle",
    image,
    methods: "Sequence[str] | str | None" = None,
    target=None,
    layer: str | None = None,
    steps: int = 20,
    baseline: str = "blur",
    sanity_threshold: float = 0.5,
) -> Generator[tuple[int, int], None, MethodComparison]:
    """:func:`compare_methods` as a generator of ``(done, total)`` after each method; returns the result."""
    from .engine.methods import applicable_layer, get_method
    from .inference import predict
    from .preprocess import check_image

    img = check_image(image)
    wanted = _resolve(methods, bundle)
    probs = np.asarray(predict(bundle, img))
    index = int(np.argmax(probs)) if target is None else bundle.class_index(target)
    random_bundle, top = randomised_copy(bundle)
    result = MethodComparison([], bundle.classes[index], index, float(probs[index]), settings={
        "methods": wanted, "layer": layer or bundle.target_layer, "steps": int(steps), "baseline": baseline,
        "sanity_threshold": sanity_threshold, "randomised_layers": top})
    yield 0, len(wanted)
    for i, name in enumerate(wanted):
        spec = get_method(name)
        try:
            row = _score(bundle, random_bundle, img, spec, index, applicable_layer(spec, layer), steps, baseline,
                         sanity_threshold)
        except GradCamError as e:
            result.notes.append(f"{spec.title} was skipped: {e}")
        else:
            result.rows.append(row)
            if row.model_dependent is False:
                result.notes.append(f"{spec.title}: its map barely changes when the top layers are re-initialised "
                                    f"(rank correlation {row.randomisation_correlation:.2f}), so it does not "
                                    "show what the model learned.")
        yield i + 1, len(wanted)
    return result


def compare_methods(
    bundle: "ModelBundle",
    image,
    methods: "Sequence[str] | str | None" = None,
    target=None,
    layer: str | None = None,
    steps: int = 20,
    baseline: str = "blur",
    sanity_threshold: float = 0.5,
) -> MethodComparison:
    """Every method's map of one image with its deletion / insertion AUC and a model-randomisation score.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, any dtype.
    methods : names (see ``list_methods()``), "all", or None: every method except the slow Score-CAM
        and occlusion.  A method the model does not support (CAM without a pooling head) is skipped
        with a note.
    target : the class to explain (name or index); None: the predicted class (the same for every method).
    layer : the layer of the layer-based methods (default the model's target layer).
    steps, baseline : of the deletion / insertion curves (:func:`napari_gradcam.localisation.deletion_insertion`).
    sanity_threshold : a map whose rank correlation with the randomised model's map is at least this
        is flagged as not depending on the model.

    Returns
    -------
    MethodComparison with one MethodScore per method (``.maps``, ``.table()``, ``.to_json(path)``).
    """
    return run_to_end(iter_compare_methods(bundle, image, methods, target, layer, steps, baseline, sanity_threshold))
