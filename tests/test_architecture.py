"""The picture of docs/architecture.md kept true: no import circles, no napari or Qt in the core.

The import graph is read from the code (``ast``), not from ``sys.modules``, so it holds every import a
reader meets: those at the top of a module, those inside functions (which hide a circle from the
interpreter but not from a reader, who still has to untangle it) and those under ``TYPE_CHECKING`` (which
type checkers and readers follow alike).  ``from PKG import NAME`` counts as an import of ``PKG.NAME``
where that is a module, else of ``PKG`` (its ``__init__``).  The package's modules are nodes; a circle is
a strongly connected set of two or more of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_gradcam"
NAPARI = "napari_gradcam._napari"
#: top-level names of napari, Qt and the Qt parts of the GUI stack: only ``_napari`` may import them
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy", "app_model")

#: Circles inside the napari skin that its own engineer removes in parallel (issue 21, point 4).
#: THE LEAD EMPTIES THIS LIST AT MERGE: each entry is an expected failure of
#: ``test_known_napari_circle_is_gone`` (strict, so a circle that is gone fails until it is taken off).


def _modules(root: Path = PACKAGE) -> dict[str, tuple[Path, list[str]]]:
    """{dotted module name: (file, the package its relative imports start from)}."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            found[".".join(parts)] = (path, parts)
        else:
            found[".".join(parts)] = (path, parts[:-1])
    return found


def _imported(node: ast.AST, package: list[str], known: dict) -> list[str]:
    """The dotted names one import statement imports (package modules resolved as described above)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return subs if len(subs) == len(node.names) else [base, *subs]


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, every module's imported top-level names)."""
    known = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    external: dict[str, set[str]] = {m: set() for m in known}
    for name, (path, package) in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, package, known):
                    if target in known and target != name:
                        edges[name].add(target)
                    elif not (isinstance(node, ast.ImportFrom) and node.level):
                        external[name].add(target.split(".")[0])
    return edges, external


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected sets of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.add(top)
                    if top == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def test_the_graph_reader_finds_a_circle_and_its_members(tmp_path):
    """The reader itself, on a small package with a known answer: a circle through a function-level and a
    TYPE_CHECKING import, a package ``__init__``, and a module outside it."""
    pkg = tmp_path / "napari_gradcam"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nimport napari\n")
    (pkg / "d.py").write_text("from .a import x\n")
    edges, external = import_graph(pkg)
    assert edges["napari_gradcam.a"] == {"napari_gradcam.sub.b"}
    assert edges["napari_gradcam.c"] == {"napari_gradcam.a"}
    assert circles(edges) == [frozenset({"napari_gradcam.a", "napari_gradcam.sub.b", "napari_gradcam.c"})]
    assert "napari" in external["napari_gradcam.c"] and "typing" in external["napari_gradcam.c"]


def test_no_import_circles():
    found = circles(import_graph()[0])
    assert not found, f"import circles: {[sorted(c) for c in found]}"


#: What each part may not import (docs/architecture.md, "The parts"): {part: forbidden parts}.  A part is a
#: module or subpackage right under ``napari_gradcam`` ("(root)" is the package's ``__init__``).
FORBIDDEN = {
    "introspect": {"models", "tv_models", "timm_models", "bundle", "engine", "preprocess", "cli", "_napari",
                   "compare", "localisation", "train", "inference", "data", "audit", "stats", "unlearn"},
    "models": {"engine", "bundle", "cli", "_napari"},
    "tv_models": {"models", "engine", "bundle", "cli", "_napari"},
    "timm_models": {"models", "engine", "bundle", "cli", "_napari"},
    "engine": {"models", "tv_models", "timm_models", "cli", "_napari", "train", "compare", "localisation",
               "data", "inference", "audit", "stats", "unlearn", "metrics"},
    "bundle": {"engine", "cli", "_napari", "train", "audit", "stats", "unlearn"},
    "preprocess": {"engine", "models", "cli", "_napari"},
    "overlays": {"engine", "bundle", "models", "cli", "_napari"},
    "compare": {"cli", "_napari", "models", "audit", "unlearn"},
    "localisation": {"cli", "_napari", "models", "audit", "unlearn", "train"},
    "train": {"engine", "cli", "_napari", "audit", "stats", "compare", "localisation"},
    "metrics": {"engine", "cli", "_napari", "train", "audit", "unlearn", "bundle", "models"},
    "audit": {"cli", "_napari", "train", "unlearn", "stats", "models", "tv_models", "timm_models", "compare",
              "localisation"},
    "stats": {"engine", "cli", "_napari", "audit", "unlearn", "models", "tv_models", "timm_models", "compare",
              "localisation"},
    "unlearn": {"engine", "train", "stats", "metrics", "cli", "_napari", "compare", "localisation"},
}

#: Where a part may import only some modules of another (docs/architecture.md): {(part, other part): the
#: modules of the other part it may import}.  Each is a piece that lies below the importing part while the
#: rest of its own part lies above it.
ONLY = {
    ("metrics", "stats"): {"napari_gradcam.stats.bootstrap"},
    ("stats", "train"): {"napari_gradcam.train.evaluate"},
    ("train", "unlearn"): {"napari_gradcam.unlearn.aclarc"},
    ("unlearn", "audit"): {"napari_gradcam.audit.confirm"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_each_part_keeps_to_what_it_may_import():
    edges, _ = import_graph()
    broken = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if _part(b) in FORBIDDEN.get(_part(a), ())
                    or b not in ONLY.get((_part(a), _part(b)), {b}))
    assert not broken, broken


def _package_imports(root: Path) -> list[tuple[str, str, list[str]]]:
    """Every import of the package by the package, at any depth of the code: (where: "file:line", the
    module it imports, the names it takes from it, empty for ``import M``)."""
    top = root.name
    found = []
    for name, (path, package) in _modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [(where, a.name, []) for a in node.names if a.name.split(".")[0] == top]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if base.split(".")[0] == top:
                    found.append((where, base, [a.name for a in node.names if a.name != "*"]))
    return found


_RESOLVE = """
import importlib, json, sys
broken = []
for where, module, names in json.loads(sys.stdin.read()):
    try:
        m = importlib.import_module(module)
    except Exception as err:
        broken.append(f"{where}: {module}: {type(err).__name__}: {err}")
        continue
    for n in names:
        if not hasattr(m, n):
            try:
                importlib.import_module(f"{module}.{n}")
            except ModuleNotFoundError:
                broken.append(f"{where}: {module} has no {n}")
            except Exception as err:
                broken.append(f"{where}: {module}.{n}: {type(err).__name__}: {err}")
print(json.dumps(broken))
"""


def unresolved_imports(root: Path = PACKAGE) -> list[str]:
    """The package's imports of itself that fail, each tried in a fresh interpreter with ``root``'s folder
    first on the path (so imports inside functions, which the interpreter meets only when they run, are
    checked too): "file:line: what is missing"."""
    import json
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _RESOLVE], input=json.dumps(_package_imports(root)),
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_import_checker_finds_broken_imports_inside_functions(tmp_path):
    """The checker itself, on a small package with known answers: a missing name and a missing module
    inside functions, a good relative import of a subpackage's module, a name its ``__init__`` defines."""
    pkg = tmp_path / "napari_gradcam"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import X\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..sub.b import nothing\n")
    (pkg / "d.py").write_text("def h():\n    import napari_gradcam.gone\n    from .sub import b, c\n")
    broken = unresolved_imports(pkg)
    assert len(broken) == 2, broken
    assert broken[0].startswith("napari_gradcam/d.py:2: napari_gradcam.gone: ModuleNotFoundError"), broken
    assert broken[1] == "napari_gradcam/sub/c.py:2: napari_gradcam.sub.b has no nothing", broken


def test_every_import_of_the_package_resolves():
    """Every ``import napari_gradcam...`` and ``from napari_gradcam... / from .x import y`` in the package,
    also inside functions and in ``_napari`` (under Xvfb), names a module and a name that exist."""
    broken = unresolved_imports()
    assert not broken, broken


def test_the_core_never_imports_napari_or_qt():
    """Read from the code: no module outside ``_napari`` names napari, Qt or magicgui in any import."""
    _, external = import_graph()
    offenders = {m: sorted(names & set(GUI)) for m, names in external.items()
                 if not (m == NAPARI or m.startswith(NAPARI + ".")) and names & set(GUI)}
    assert not offenders, offenders


def test_importing_the_whole_core_loads_no_napari_or_qt():
    """Run: every core module imported in a fresh interpreter leaves napari and Qt unloaded (nothing pulls
    them in through a third-party package either)."""
    core = [m for m in _modules() if m != NAPARI and not m.startswith(NAPARI + ".") and not m.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for m in {core!r}:\n    importlib.import_module(m)\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[0] in {GUI!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_new_cam_method_is_one_weight_function(monkeypatch, tiny_bundle):
    """docs/architecture.md, "Adding a CAM method": one decorated function in
    ``engine/methods/gradient/formulas.py`` is all a method needs; done here from outside through the same
    decorator (on copies of the registry, so other tests never see it), with a known answer: the
    element-wise weighting G * A is HiResCAM's map."""
    import numpy as np

    import napari_gradcam as ng
    from napari_gradcam.engine.methods import gradient, registry
    from napari_gradcam.engine.methods.gradient import formulas

    registry.get_method("gradcam")  # the families are registered before the registry is copied
    for module, name in ((registry, "_REGISTRY"), (registry, "_ALIASES"), (formulas, "_FAMILY")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))

    @gradient.gradient_cam("toycam", "Toy-CAM", "gradient times activation, per position (a test's method)",
                           aliases=("toy-cam",))
    def toycam(A, G):
        r"""weighted_k(i, j) = G_k(i, j) A_k(i, j)"""
        return G * A

    assert {"name": "toycam", "title": "Toy-CAM", "family": "cam",
            "description": "gradient times activation, per position (a test's method)"} in ng.list_methods()
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    toy = ng.explain(tiny_bundle, image, "Toy-CAM", target="all")
    hires = ng.explain(tiny_bundle, image, "hirescam", target="all")
    for a, b in zip(toy, hires):
        assert a.method == "toycam" and a.layers == b.layers and a.target == b.target
        np.testing.assert_allclose(a.coarse, b.coarse, atol=1e-6)
        np.testing.assert_allclose(a.raw, b.raw, atol=1e-6)


def test_methods_are_listed_in_one_order_whichever_family_is_imported_first():
    """Menus, --help and compare_methods list the methods in the registry's order: the families' order,
    not the order in which some other module happened to import them."""
    code = ("import importlib, sys\n"
            "importlib.import_module(sys.argv[1])\n"
            "import napari_gradcam as ng\n"
            "print(' '.join(m['name'] for m in ng.list_methods()))\n")
    orders = {subprocess.run([sys.executable, "-c", code, first], capture_output=True, text=True,
                             timeout=120).stdout.strip()
              for first in ("napari_gradcam.engine.methods.perturbation.ablation",
                            "napari_gradcam.engine.methods.gradient.family", "napari_gradcam.engine.tiling",
                            "napari_gradcam.engine.methods.attribution")}
    assert len(orders) == 1
    names = orders.pop().split()
    assert names[:3] == ["cam", "gradcam", "gradcam++"] and names.index("scorecam") < names.index("ablationcam")
    assert names.index("ablationcam") < names.index("saliency") and names[-1] == "guided-gradcam"


_CALLS = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import napari_gradcam as ng
ng_audit, ng_unlearn = ng.audit, ng.unlearn  # before the functions' modules are imported below
from napari_gradcam.audit.run import audit
from napari_gradcam.unlearn.pclarc import unlearn


def said(f, *args):
    try:
        f(*args)
    except Exception as err:
        return type(err).__name__ + ': ' + str(err)
    return 'no error'


print(said(ng_audit, None, [[0]]) == said(ng.audit, None, [[0]]) == said(audit, None, [[0]]) != 'no error',
      said(ng_unlearn, None, 'x') == said(ng.unlearn, None, 'x') == said(unlearn, None, 'x') != 'no error',
      said(ng_audit, None, [[0]]).split(':')[0])
"""


@pytest.mark.parametrize("first", [(), ("napari_gradcam.audit", "napari_gradcam.unlearn"),
                                   ("napari_gradcam.unlearn.aclarc", "napari_gradcam.audit.result"),
                                   ("napari_gradcam.train", "napari_gradcam.cli")], ids=lambda f: "+".join(f) or "root")
def test_audit_and_unlearn_are_the_functions_in_every_import_order(first):
    """docs/architecture.md, "Callable packages": ``ng.audit(model, source)`` and ``ng.unlearn(bundle, dir)``
    call the functions whether the name was first reached through the package's lazy names or the
    subpackage was imported before (which binds the subpackage, a module, to the name): the same answer
    as the functions themselves, here a one-sentence refusal of a model that is not one."""
    out = subprocess.run([sys.executable, "-c", _CALLS, *first], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    same_audit, same_unlearn, kind = out.stdout.split()
    assert same_audit == "True" and same_unlearn == "True", out.stdout
    assert kind != "TypeError", out.stdout
