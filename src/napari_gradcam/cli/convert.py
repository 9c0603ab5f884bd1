"""``napari-gradcam convert``: a state dict or ONNX model into a self-describing .safetensors bundle."""

from __future__ import annotations

import sys

from ._common import PROG, _fmt_kw, _load, add_model_options, add_quiet, check_outputs
from .info import _summary


def cmd_convert(args) -> int:
    from ..bundle import save_model
    from ..models import get_module

    check_outputs([(args.out, "model", "--out")], inputs=[args.model])  # before the model loads
    bundle = _load(args)
    if args.target_layer:
        get_module(bundle.model, args.target_layer)  # a LayerError names the choices
        bundle.config.target_layer = args.target_layer
    out = save_model(bundle, args.out)
    if not args.quiet:
        print(f"{_summary(bundle)} written to {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add ``convert`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "convert", help="turn a state dict or ONNX model into a self-describing .safetensors bundle",
        description="Load IN (a .pt/.pth state dict, an .onnx model, or a bundle) described by the options below "
                    "and write a napari-gradcam bundle that describes itself (architecture, classes, input size, "
                    "channels, normalisation, target layer). No code from IN runs.",
        epilog=f"""examples:
  {PROG} convert r18.pt --arch resnet18 --classes NORMAL PNEUMONIA --out r18.safetensors
  {PROG} convert vit.pth --arch vit_b_16 --classes a b c --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --out vit.safetensors
  {PROG} convert keras_model.onnx --classes cat dog --out keras.safetensors
""", **_fmt_kw())
    p.add_argument("model", metavar="IN", help="a .pt/.pth/.bin state dict, an .onnx model or a .safetensors file")
    p.add_argument("--out", required=True, metavar="M.safetensors", help="where to write the bundle")
    p.add_argument("--target-layer", metavar="NAME", help="the default layer to explain (default: found from the network)")
    add_model_options(p)
    add_quiet(p)
    p.set_defaults(func=cmd_convert, device="cpu")
