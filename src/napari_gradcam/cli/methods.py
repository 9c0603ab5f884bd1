"""``napari-gradcam methods``: the explanation methods, by family."""

from __future__ import annotations

from ._common import GradCamError, PROG, _fmt_kw


def cmd_methods(args) -> int:
    from ..engine.methods import list_methods
    from ..errors import GradCamError

    rows = list_methods()
    if args.family:
        families = sorted({r["family"] for r in rows})
        rows = [r for r in rows if r["family"] == args.family]
        if not rows:
            raise GradCamError(f"No method of family {args.family!r}; the families are {', '.join(families)}.")
    width = max(len(r["name"]) for r in rows) + 2
    fam = max(len(r["family"]) for r in rows) + 2
    for r in rows:
        print(f"{r['name']:<{width}}{r['family']:<{fam}}{r['description']}")
    return 0


def register(sub) -> None:
    """Add ``methods`` to the subparsers ``sub``."""
    p = sub.add_parser("methods", help="list the explanation methods (name, family, description)",
                       description="List every explanation method `explain --method` and `compare` accept.",
                       epilog=f"examples:\n  {PROG} methods\n  {PROG} methods --family attribution\n", **_fmt_kw())
    p.add_argument("--family", metavar="FAMILY", help="only the methods of one family (cam, attribution)")
    p.set_defaults(func=cmd_methods)
