"""Run ``napari-gradcam`` as a core install would (``pip install napari-gradcam``, no extras).

Usage: ``python core_install_check.py SITE -- CLI ARGS...``.  SITE holds napari-gradcam installed from
its wheel (``pip install --no-deps --target SITE``).  This script puts SITE first on ``sys.path``,
drops any other copy of the package from it, and makes every module outside the *core closure*
unimportable: the standard library plus the distributions that napari-gradcam's core requirements
(``Requires-Dist`` without extras) pull in, transitively.  A module imported at run time but not
declared (matplotlib, scipy, Pillow before #14) raises ModuleNotFoundError here, as it would in a
fresh virtual environment; so do napari and the test-only packages.  Prints a JSON line
``{"package": <napari_gradcam's folder>}`` before running the command.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path


def _requirements(dist: md.Distribution) -> list[str]:
    """Names of the distributions ``dist`` requires without extras (markers evaluated here)."""
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(req.name)
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_closure(site: Path) -> set[str]:
    """Normalised names of every distribution the core install of napari-gradcam needs."""
    ours = next(d for d in md.distributions(path=[str(site)]) if _norm(d.metadata["Name"]) == "napari-gradcam")
    todo, seen = _requirements(ours), {"napari-gradcam"}
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += _requirements(md.distribution(name))
        except md.PackageNotFoundError:
            pass  # an optional platform dependency that is not installed: nothing can import it anyway
    return seen


def allowed_modules(closure: set[str]) -> set[str]:
    """Top-level module names provided by the distributions in ``closure``."""
    allowed = set()
    for module, dists in md.packages_distributions().items():
        if any(_norm(d) in closure for d in dists):
            allowed.add(module)
    return allowed


class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed | set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"napari_gradcam"}
        self.blocked: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.allowed or top.startswith("_"):  # private helpers of allowed packages and of Python
            return None
        self.blocked.add(top)
        raise ModuleNotFoundError(f"No module named {top!r} (not in the core install)", name=top)


def main() -> int:
    site = Path(sys.argv[1]).resolve()
    args = sys.argv[sys.argv.index("--") + 1:]
    # other copies of the package (a checkout's src/): an editable install's site-packages holds only
    # napari_gradcam/sample_data (no __init__.py) and stays, with every dependency in it
    sys.path[:] = [str(site)] + [p for p in sys.path if not (Path(p) / "napari_gradcam" / "__init__.py").exists()]
    for name in [m for m in sys.modules if m.partition(".")[0] == "napari_gradcam"]:
        del sys.modules[name]
    blocker = Blocker(allowed_modules(core_closure(site)))
    sys.meta_path.insert(0, blocker)
    import napari_gradcam
    from napari_gradcam.cli import main as cli

    print(json.dumps({"package": str(Path(napari_gradcam.__file__).parent)}), flush=True)
    code = cli(args)
    print(json.dumps({"blocked": sorted(blocker.blocked)}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
