"""Functions over ~60 lines and modules over ~500 lines in src/ (the bar of docs/architecture.md).

    python scripts/code_shape.py [--functions 60] [--modules 500] [PATH ...]

Prints one line per offender (lines, name) and exits 0; a report, not a gate.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def offenders(paths: list[Path], max_function: int, max_module: int) -> tuple[list, list]:
    """([(lines, "file:function")...], [(lines, "file")...]), longest first."""
    functions, modules = [], []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        name = str(path.relative_to(ROOT))
        if n > max_module:
            modules.append((n, name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_function:
                    functions.append((length, f"{name}:{node.lineno} {node.name}"))
    return sorted(functions, reverse=True), sorted(modules, reverse=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", type=int, default=60)
    p.add_argument("--modules", type=int, default=500)
    p.add_argument("paths", nargs="*", type=Path, default=[ROOT / "src"])
    args = p.parse_args()
    files = sorted(f for path in args.paths for f in ([path] if path.is_file() else path.rglob("*.py")))
    functions, modules = offenders([f.resolve() for f in files], args.functions, args.modules)
    for n, name in modules:
        print(f"module   {n:5d}  {name}")
    for n, name in functions:
        print(f"function {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
