"""``napari-gradcam unlearn``: remove an audit's finding from a model without retraining (P-ClArC)."""

from __future__ import annotations

import json
import sys

from ._common import (MAX_COUNT, PROG, _fmt_kw, _load, add_device, add_model_options, add_quiet, check_outputs,
                      int_type)


def cmd_unlearn(args) -> int:
    from ..bundle import save_model
    from ..unlearn.findings import parse_target
    from ..unlearn.pclarc import unlearn

    folder, _ = parse_target(args.audit)
    check_outputs([(args.out, "model", "--out")], inputs=[args.model, folder])
    bundle = _load(args)
    new = unlearn(bundle, args.audit, layer=args.layer, everywhere=args.everywhere, margin=args.margin,
                  max_images=args.max_images)
    out = save_model(new, args.out)
    if args.recheck:
        from ..unlearn.proof import recheck

        report = recheck(new, args.audit)
        print(json.dumps(report, indent=2))
    if not args.quiet:
        for p in new.projections[len(getattr(bundle, "projections", [])):]:
            print(f"projected out of {p.layer}: cluster {p.info.get('clusters')} of {p.info.get('audit')} "
                  f"({p.info.get('n_members')} members against {p.info.get('n_others')} other images of "
                  f"{', '.join(p.info.get('classes', []))})", file=sys.stderr)
        print(f"written to {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add the ``unlearn`` command to the subparsers ``sub``."""
    p = sub.add_parser(
        "unlearn", help="remove an audit's finding from a model without retraining (P-ClArC)",
        description="Remove what an audit found from MODEL without retraining (P-ClArC, Anders et al. 2022): the "
                    "artifact's direction at the audit's layer (the mean activation of the cluster's members minus "
                    "that of the other images of their class, at the finding's box) is projected out of that layer's "
                    "activations at the box (--everywhere: at every position). The "
                    "projection is stored in the new model file as numbers (a layer name, a vector, a reference "
                    "point) and applies on every path: predict, explain, tile, audit, evaluate. AUDIT is an audit "
                    "folder: AUDIT:ID unlearns cluster ID, AUDIT alone every cluster it calls a likely shortcut. "
                    "To unlearn by retraining instead (A-ClArC), use train --unlearn AUDIT[:ID].",
        epilog=f"""examples:
  {PROG} unlearn model.safetensors audit/:3 --out model_p.safetensors
  {PROG} unlearn model.safetensors audit/ --out model_p.safetensors --recheck
  {PROG} unlearn model.safetensors audit/:3 --out model_p.safetensors --layer features.block2
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="the audited model file")
    p.add_argument("audit", metavar="AUDIT_DIR[:ID]", help="the audit folder, optionally with a cluster id")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="where to write the new model")
    p.add_argument("--layer", metavar="NAME", help="project at this layer (default: the audit's explained layer); an early block whose cells see "
                        "a small neighbourhood (features.block2, layer2) keeps the artifact inside its box, "
                        "try it when --recheck still finds the shortcut")
    p.add_argument("--everywhere", action="store_true",
                   help="project at every position of the layer (Anders et al.'s P-ClArC) instead of only at the "
                        "finding's box; removes more of the class's own evidence")
    p.add_argument("--margin", type=int_type(0, 64, name="--margin"), default=1, metavar="CELLS",
                   help="cells of the layer's grid added around the box")
    p.add_argument("--max-images", type=int_type(2, MAX_COUNT, name="--max-images"), default=1000, metavar="N",
                   help="at most N members and N other images per finding for the concept vector")
    p.add_argument("--recheck", action="store_true",
                   help="re-run the findings' removal and insertion tests on the new model and print them as JSON")
    add_device(p)
    add_quiet(p)
    add_model_options(p)
    p.set_defaults(func=cmd_unlearn)
