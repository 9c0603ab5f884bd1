"""Type and range checks for the public API's arguments, shared with the command line.

Each check returns the value in its plain Python type or raises :class:`~napari_gradcam.errors.ParameterError`
with one sentence naming the argument.  Booleans are never numbers here (``True`` is not a class index
nor a batch size), non-integral numbers are not counts (``1.5`` is not a batch size), and NaN or
infinity is never a setting.
"""

from __future__ import annotations

import math
import numbers

from .errors import ParameterError, shown

__all__ = ["check_int", "check_number", "check_bool", "is_integer", "check_bundle"]


def _brief(value: object, limit: int = 60) -> str:
    text = shown(repr(value))
    return text if len(text) <= limit else text[:limit] + "..."


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), and not a bool."""
    import numpy as np

    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum]; ParameterError for bools, floats, strings, out of range."""
    if not is_integer(value):
        raise ParameterError(f"{name} must be a whole number, not {_brief(value)}.")
    value = int(value)
    _check_range(value, name, minimum, maximum)
    return value


def check_number(value: object, name: str, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite float with ``minimum <= value <= maximum`` and ``above < value < below``."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number, not {_brief(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, not {value}.")
    _check_range(value, name, minimum, maximum)
    if above is not None and not value > above:
        raise ParameterError(f"{name} must be greater than {_num(above)}, not {_num(value)}.")
    if below is not None and not value < below:
        raise ParameterError(f"{name} must be less than {_num(below)}, not {_num(value)}.")
    return value


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool (numpy's too); ParameterError for 0/1, strings and others."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} must be True or False, not {_brief(value)}.")
    return bool(value)


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _check_range(value: float, name: str, minimum, maximum) -> None:
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ParameterError(f"{name} must be between {_num(minimum)} and {_num(maximum)}, not {_num(value)}.")
    if minimum is not None and value < minimum:
        what = "0 or more" if minimum == 0 else f"at least {_num(minimum)}"
        raise ParameterError(f"{name} must be {what}, not {_num(value)}.")
    if maximum is not None and value > maximum:
        raise ParameterError(f"{name} must be at most {_num(maximum)}, not {_num(value)}.")


def check_bundle(bundle: object, what: str) -> None:
    """ParameterError unless ``bundle`` is a ModelBundle (a network with its classes and preprocessing)."""
    if hasattr(bundle, "model") and hasattr(bundle, "config") and hasattr(bundle, "classes"):
        return
    hint = ("; wrap a network with napari_gradcam.wrap_model(module, classes=...)"
            if hasattr(bundle, "forward") else "; load one with napari_gradcam.load_model(path)")
    raise ParameterError(f"{what} needs a ModelBundle, not {type(bundle).__name__}{hint}.")
