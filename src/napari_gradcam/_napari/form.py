"""Forms declared once: a widget's parameters are one dataclass whose fields carry their label, tooltip,
choices and limits (:func:`param`); :func:`build_form` makes the magicgui form of it and binds the two
(:func:`bind`).  A run takes a copy of the parameters with its overrides
(:func:`~.params.snapshot`), never the Qt controls.

    @evented
    @dataclass
    class FeatureParams:
        count: int = param(16, "channels", "How many of the most active channels to show.", min=1, max=512)

    form, controls = build_form(self.params, owner=self)   # controls["count"] is a SpinBox

``choices`` may be a list of values or (label, value) pairs, or the name of a method of the owner
widget that returns them (choices that follow the model).
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any, Mapping

#: the keys of a field's metadata that describe its form control
FORM_KEY = "form"


def param(default: Any, label: str, tooltip: str = "", *, choices: Any = None, widget: str | None = None,
          **options: Any) -> Any:
    """A dataclass field with its form control described in ``metadata["form"]``.

    ``label``: the control's label (a check box's text); ``tooltip``; ``choices``: values, (label, value)
    pairs, or the name of an owner method returning them; ``widget``: a magicgui widget type where the
    default one does not fit ("Select", "FileEdit", "LineEdit"); ``options``: the widget's own (min, max,
    step, mode, filter, ...).
    """
    meta = {"label": label, "tooltip": tooltip, "choices": choices, "widget": widget, "options": options}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={FORM_KEY: meta})
    return field(default=default, metadata={FORM_KEY: meta})


def form_fields(params) -> list:
    """The fields of ``params`` that have a form control, in declaration order."""
    return [f for f in fields(params) if FORM_KEY in f.metadata]


def make_control(f, value: Any, owner: Any = None):
    """The magicgui control of one declared field, showing ``value``."""
    from magicgui.widgets import CheckBox, create_widget

    meta = f.metadata[FORM_KEY]
    options = dict(meta["options"])
    choices = meta["choices"]
    if isinstance(choices, str):
        choices = getattr(owner, choices)
    if choices is not None:
        options["choices"] = choices
    if isinstance(value, bool) and meta["widget"] is None:
        control = CheckBox(text=meta["label"], value=value)
    else:
        kind = meta["widget"] or ("ComboBox" if choices is not None else None)
        default = f.default if f.default is not MISSING else value
        annotation = None if kind is not None else type(default)
        try:
            control = create_widget(value=_control_value(value), annotation=annotation, label=meta["label"],
                                    widget_type=kind, options=options)
        except (ValueError, TypeError):  # not among the choices of this moment (e.g. no model yet): bind fixes it
            control = create_widget(annotation=annotation, label=meta["label"], widget_type=kind, options=options)
    if meta["tooltip"]:
        control.native.setToolTip(meta["tooltip"])
    return control


def _control_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def build_form(params, owner: Any = None, before: tuple = (), names: tuple | None = None):
    """A magicgui Container of ``before`` (e.g. a layer picker) and one control per declared field of
    ``params`` (only those in ``names`` when given: a widget with two forms), bound both ways to it;
    returns (container, {field name: control})."""
    from magicgui.widgets import Container

    controls = {f.name: make_control(f, getattr(params, f.name), owner) for f in form_fields(params)
                if names is None or f.name in names}
    form = Container(widgets=[*before, *controls.values()], labels=True)
    form.native.layout().setContentsMargins(0, 0, 0, 0)
    bind(params, controls)
    return form, controls


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
