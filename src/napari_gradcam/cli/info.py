"""``napari-gradcam info``: what a model file holds (architecture, classes, input, layers)."""

from __future__ import annotations

import json

from ._common import GradCamError, PROG, _fmt_kw, _load, add_model_options, add_quiet


def _summary(bundle) -> str:
    c = bundle.config
    return (f"{c.architecture} ({len(c.classes)} classes, {c.in_channels} channel{'s' if c.in_channels > 1 else ''}, "
            f"{c.input_size} px)")


def _cam_head(bundle) -> str:
    from ..engine.methods.cam import cam_head
    from ..errors import GradCamError

    try:
        head = cam_head(bundle)
    except GradCamError:
        return "none (CAM is not defined for this head; Grad-CAM and the others work)"
    return f"{head.features} -> global average pooling{' after a ReLU' if head.relu else ''} -> {head.linear}"


def _describe(bundle, all_layers: bool) -> dict:
    c = bundle.config
    n_params = sum(p.numel() for p in bundle.model.parameters())
    return {
        "architecture": c.architecture, "classes": c.classes, "input_size": c.input_size,
        "in_channels": c.in_channels, "mean": c.mean, "std": c.std, "target_layer": c.target_layer,
        "cam_head": _cam_head(bundle), "parameters": n_params,
        "layers": bundle.layers(max_depth=None if all_layers else 3),
        "training": c.training, "origin": c.origin, "notes": list(bundle.notes),
    }


def cmd_info(args) -> int:
    bundle = _load(args)
    info = _describe(bundle, args.all_layers)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("architecture", info["architecture"]),
        ("classes", f"{len(info['classes'])}: {', '.join(info['classes'])}"),
        ("input", f"{info['input_size']} x {info['input_size']} px, {info['in_channels']} "
                  f"channel{'s' if info['in_channels'] > 1 else ''}"),
        ("normalisation", f"mean {info['mean']}, std {info['std']} (after scaling pixels to [0, 1])"),
        ("target layer", info["target_layer"] or "none found (give --layer)"),
        ("CAM head", info["cam_head"]),
        ("parameters", f"{info['parameters']:,}"),
    ]
    if info["training"].get("epochs_done"):
        rows.append(("trained", f"{info['training']['epochs_done']} epoch(s)"))
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        print(f"{key:<{width}}{value}")
    depth = "" if args.all_layers else " (up to 3 levels deep; --all-layers for all)"
    print(f"layers with a spatial output, usable with --layer{depth}:")
    for name in info["layers"]:
        print(f"  {name}")
    return 0


def register(sub) -> None:
    """Add ``info`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "info", help="what a model file holds: architecture, classes, input, normalisation, layer names",
        description="Print MODEL's architecture, classes, input size and channels, normalisation, default target "
                    "layer, CAM head and the names of its layers with a spatial output (for --layer).",
        epilog=f"""examples:
  {PROG} info pneumonia.safetensors
  {PROG} info r18.pt --arch resnet18 --classes NORMAL PNEUMONIA --json
""", **_fmt_kw())
    p.add_argument("model", metavar="MODEL", help="a .safetensors bundle, a .pt/.pth state dict or an .onnx model")
    p.add_argument("--all-layers", action="store_true", help="list layers at every depth")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    add_model_options(p)
    add_quiet(p)
    p.set_defaults(func=cmd_info, device="cpu")
