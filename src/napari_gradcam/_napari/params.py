"""Widget parameters as small evented dataclasses, and the binding of a form to them.

A widget's form controls and its parameter object stay equal both ways (:func:`bind`): the user edits
the form, code sets the object (or the control, which validates against its choices), and a run reads a
copy of the object taken when it starts (:func:`snapshot`), never the Qt controls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from psygnal import evented

PREDICTED = "predicted class"
ALL = "all classes"


@evented
@dataclass
class ClassifyParams:
    every_slice: bool = False


@evented
@dataclass
class ExplainParams:
    method: str = "gradcam"
    target: str = PREDICTED
    layer: str = ""
    shifts: int = 1
    scale: str = "probability"
    keep: bool = False


@evented
@dataclass
class CompareParams:
    target: str = PREDICTED
    layer: str = ""
    methods: tuple = ()


@evented
@dataclass
class TiledParams:
    method: str = "cam"
    tile: int = 0  # 0: the model's training scale
    overlap: float = 0.5
    class_mode: str = "all"
    k: int = 2
    chosen: tuple = ()
    keep: bool = False


@evented
@dataclass
class FeatureParams:
    layer: str = ""
    count: int = 16
    display: str = "stack"
    keep: bool = False


@evented
@dataclass
class LocalisationParams:
    tolerance: float = 15.0
    level: float = 0.5
    curves: bool = False


@evented
@dataclass
class TrainParams:
    data_dir: str = ""
    output: str = ""
    architecture: str = "simple_cnn"
    image_size: int = 128
    epochs: int = 10
    batch_size: int = 32
    lr: str = "0.001"
    augment: bool = True
    val_fraction: float = 0.2
    weighting: str = "balanced"
    device: str = "auto"


def snapshot(params, **overrides):
    """A copy of ``params`` for a run (later edits of the form do not reach it), with ``overrides`` (None
    values ignored) replacing fields; an unknown field name is a TypeError."""
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def bind(params, controls: Mapping[str, Any]) -> None:
    """Keep ``params``' fields and the magicgui ``controls`` of the same names equal, both ways.

    The controls take the parameters' values first (where they are valid choices).
    """
    names = {f.name for f in fields(params)}
    for name, control in controls.items():
        if name not in names:
            raise KeyError(f"{type(params).__name__} has no field {name!r}")
        _set_control(control, getattr(params, name))
        setattr(params, name, _value(control))
        # keyword-only defaults: psygnal passes as many positional values as a callback takes
        control.changed.connect(lambda _v, *, n=name, c=control: setattr(params, n, _value(c)))
        getattr(params.events, name).connect(lambda v, *, c=control: _set_control(c, v))


def _value(control):
    value = control.value
    if isinstance(value, list):
        return tuple(value)
    if hasattr(value, "__fspath__"):
        return "" if str(value) in ("", ".") else str(value)
    return value


def _set_control(control, value) -> None:
    try:
        if _value(control) != value:
            control.value = list(value) if isinstance(value, tuple) else value
    except (ValueError, TypeError, RuntimeError):  # not among the current choices, or the Qt widget is gone
        pass


def as_dict(params) -> dict:
    return asdict(params)
