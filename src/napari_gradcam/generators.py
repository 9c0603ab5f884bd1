"""Running the library's generators: each long computation yields its progress and returns its result."""

from __future__ import annotations

from typing import Any, Callable, Generator


def run_to_end(gen: Generator, each: Callable[[Any], object] | None = None) -> Any:
    """Run ``gen`` to its end, calling ``each(value)`` on every value it yields; return what it returns."""
    while True:
        try:
            value = next(gen)
        except StopIteration as stop:
            return stop.value
        if each is not None:
            each(value)
