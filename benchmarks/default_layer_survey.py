"""The default Grad-CAM layer that given finder functions pick, for every torchvision classifier,
the registered architectures and a few timm models (random init, 3 x 224 x 224 inputs).

Usage::

    python benchmarks/default_layer_survey.py OUT.jsonl LABEL=module:function [LABEL=module:function ...]

Each line of OUT.jsonl is one architecture: ``{"arch": ..., LABEL: answer, LABEL + "_s": seconds}``;
an answer is the layer name, ``""``, or ``"!ErrorClass: message"`` when the function raised.  The
file is appended to and architectures already in it are skipped, so a stopped run resumes.
``--only a,b`` limits the run to those architectures.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import time
import warnings
from pathlib import Path

TIMM = ("timm:resnet18", "timm:efficientnet_b0", "timm:convnext_tiny", "timm:vit_tiny_patch16_224",
        "timm:swin_tiny_patch4_window7_224")


def architectures() -> list[str]:
    """Registered names, then every torchvision classifier not registered, then timm models if installed."""
    import importlib.util

    import torchvision.models as tvm

    from napari_gradcam.models import ARCHITECTURES

    names = list(ARCHITECTURES) + [n for n in tvm.list_models(module=tvm) if n not in ARCHITECTURES]
    if importlib.util.find_spec("timm") is not None:
        names += list(TIMM)
    return names


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def answer(fn, model, size: int) -> str:
    try:
        return fn(model, 3, size)
    except Exception as e:  # noqa: BLE001 - recorded, not raised
        return f"!{type(e).__name__}: {str(e)[:120]}"


def survey_one(arch: str, finders: dict, size: int = 224) -> dict:
    """Every finder's answer for one architecture, built fresh for each (no cache shared between them)."""
    import torch

    from napari_gradcam.models import build_network

    row: dict = {"arch": arch}
    for label, fn in finders.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_network(arch, 3, 3, input_size=size).eval()
        start = time.perf_counter()
        row[label] = answer(fn, model, size)
        row[label + "_s"] = round(time.perf_counter() - start, 2)
        del model
        gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("finders", nargs="+", help="LABEL=module:function")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    finders = {label: _function(spec) for label, spec in (f.split("=", 1) for f in args.finders)}
    done = set()
    if args.out.exists():
        done = {json.loads(line)["arch"] for line in args.out.read_text().splitlines() if line.strip()}
    names = args.only.split(",") if args.only else architectures()
    for arch in names:
        if arch in done:
            continue
        row = survey_one(arch, finders)
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
