"""Explanation speed, measured side by side in one run.

1. Every registered method (``ng.list_methods()``, so methods added later are timed too) on one
   224 x 224 RGB image, for resnet18 and resnet50 (random init, target class 1, the model's default
   layer), next to a forward pass and to the same method in pytorch-grad-cam, torchcam and captum
   (the table :data:`ANCHORS` says which class is "the same method"; a method without an entry is timed
   alone).  "ours" is the engine's compute function on the network input, as the anchors get it.
   Targets: ours no slower than the fastest anchor; gradient CAMs <= 1.3x a forward pass; Score-CAM and
   Ablation-CAM >= 2x faster than pytorch-grad-cam.
2. ``--tiling``: tiled heatmaps of a large image (per-tile loop, batched, fully convolutional).
3. ``--shifts``: shift-averaged Grad-CAM against plain ``explain()`` and a loop of separate calls.

Times are medians over interleaved rounds (each callable once per round, the forward pass in every
round), so machine noise hits all alike.  Methods marked slow in the registry (one pass per channel or
square) and the perturbation anchors run one round.  The load average is printed: on a shared machine
compare ratios within a row, not times across rows.

Run: ``python benchmarks/explain_speed.py [--archs resnet18 resnet50] [--rounds 3] [--methods ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import torch

import napari_gradcam as ng
from napari_gradcam.engine import explain, get_method, tiled_heatmaps
from napari_gradcam.preprocess import bundle_tensor

TARGET = 1
#: methods whose maps come from gradients at a layer: target <= 1.3x a forward pass
GRADIENT_CAMS = {"gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "gradcam-elementwise", "eigengradcam"}
#: our method -> {anchor library: class name}; captum classes run with our documented settings
ANCHORS: dict[str, dict[str, str]] = {
    "cam": {"torchcam": "CAM"},
    "gradcam": {"pytorch-grad-cam": "GradCAM", "torchcam": "GradCAM", "captum": "LayerGradCam"},
    "gradcam++": {"pytorch-grad-cam": "GradCAMPlusPlus", "torchcam": "GradCAMpp"},
    "hirescam": {"pytorch-grad-cam": "HiResCAM"},
    "xgradcam": {"pytorch-grad-cam": "XGradCAM", "torchcam": "XGradCAM"},
    "layercam": {"pytorch-grad-cam": "LayerCAM", "torchcam": "LayerCAM"},
    "gradcam-elementwise": {"pytorch-grad-cam": "GradCAMElementWise"},
    "eigencam": {"pytorch-grad-cam": "EigenCAM"},
    "eigengradcam": {"pytorch-grad-cam": "EigenGradCAM"},
    "scorecam": {"pytorch-grad-cam": "ScoreCAM", "torchcam": "ScoreCAM"},
    "ablationcam": {"pytorch-grad-cam": "AblationCAM"},
    "saliency": {"captum": "Saliency"},
    "integrated-gradients": {"captum": "IntegratedGradients"},
    "smoothgrad": {"captum": "NoiseTunnel"},
    "occlusion": {"captum": "Occlusion"},
    "guided-backprop": {"captum": "GuidedBackprop", "pytorch-grad-cam": "GuidedBackpropReLUModel"},
    "guided-gradcam": {"captum": "GuidedGradCam"},
}
LIBRARIES = ("pytorch-grad-cam", "torchcam", "captum")
SLOW_ANCHORS = {"ScoreCAM", "AblationCAM", "Occlusion"}


def interleaved(fns: dict[str, Callable], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, running them in turn each round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _quiet(fn: Callable) -> Callable:
    """``fn`` with stderr (progress bars of the anchors) and warnings swallowed."""
    def run():
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


# ----------------------------------------------------------------------------- anchors
def _pgc(cls_name: str, model, layer: str, x) -> Callable:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if cls_name == "GuidedBackpropReLUModel":
        gb = pgc.GuidedBackpropReLUModel(model, device=x.device)
        return lambda: gb(x, target_category=TARGET)
    cam = getattr(pgc, cls_name)(model=model, target_layers=[model.get_submodule(layer)])
    targets = [ClassifierOutputTarget(TARGET)]

    def run():
        cam(input_tensor=x, targets=targets)
        model.zero_grad(set_to_none=True)
    return run


def _torchcam(cls_name: str, model, layer: str, x) -> Callable:
    import torchcam.methods as tcm

    cam = getattr(tcm, cls_name)(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
    gradients = cls_name not in ("CAM", "ScoreCAM")

    def run():
        with torch.set_grad_enabled(gradients):
            out = model(x)
            cam(TARGET, out)
        model.zero_grad(set_to_none=True)
    return run


def _captum(cls_name: str, bundle, model, layer: str, x) -> Callable:
    """captum with our settings (steps, samples, window), its own defaults for batching."""
    import captum.attr as ca

    from napari_gradcam.engine.methods import attribution as A

    black = A.black_baseline(bundle, x)
    c = x.shape[1]
    if cls_name == "LayerGradCam":
        return lambda: ca.LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=TARGET)
    if cls_name == "GuidedGradCam":
        return lambda: ca.GuidedGradCam(model, model.get_submodule(layer)).attribute(x, target=TARGET)
    if cls_name == "IntegratedGradients":
        return lambda: ca.IntegratedGradients(model).attribute(x, baselines=black, target=TARGET, n_steps=A.IG_STEPS)
    if cls_name == "NoiseTunnel":
        stdev = float(A.SMOOTHGRAD_NOISE * (x.max() - x.min()))
        return lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=A.SMOOTHGRAD_SAMPLES, stdevs=stdev, target=TARGET)
    if cls_name == "Occlusion":
        w, s = A.occlusion_window(x.shape[-1])
        return lambda: ca.Occlusion(model).attribute(x, sliding_window_shapes=(c, w, w), strides=(c, s, s),
                                                     baselines=black, target=TARGET)
    return lambda: getattr(ca, cls_name)(model).attribute(x, target=TARGET)


def anchor_runs(method: str, bundle, layer: str, x) -> dict[str, Callable]:
    """The anchor libraries' version of ``method``, each on its own copy of the model (ReLUs as they are)."""
    runs = {}
    for lib, cls_name in ANCHORS.get(method, {}).items():
        model = copy.deepcopy(bundle.model).eval()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchcam prints its guesses of layers
                if lib == "pytorch-grad-cam":
                    runs[lib] = _pgc(cls_name, model, layer, x)
                elif lib == "torchcam":
                    runs[lib] = _torchcam(cls_name, model, layer, x)
                else:
                    runs[lib] = _captum(cls_name, bundle, model, layer, x)
        except (ImportError, AttributeError) as e:  # a library or class this environment lacks
            print(f"  ({lib} {cls_name} unavailable: {e})")
    return runs


# ----------------------------------------------------------------------------- the method table
def method_row(bundle, method: str, x, rounds: int, **options) -> dict[str, float]:
    spec = get_method(method)
    layer = bundle.target_layer
    layers = [spec.fixed_layer(bundle)] if spec.fixed_layer else ([layer] if spec.uses_layer else [])
    model = bundle.model

    def forward():
        with torch.inference_mode():
            model(x)

    fns = {"forward": forward, "ours": _quiet(lambda: spec.compute(bundle, x, [TARGET], layers, **options))}
    fns.update({lib: _quiet(run) for lib, run in anchor_runs(method, bundle, layer, x).items()})
    slow = spec.extra.get("slow") or any(ANCHORS.get(method, {}).get(lib) in SLOW_ANCHORS for lib in fns)
    return interleaved(fns, 1 if slow else rounds, warmup=0 if slow else 1)


def _verdict(method: str, r: dict[str, float]) -> str:
    notes = []
    anchors = [r[lib] for lib in LIBRARIES if lib in r]
    if anchors:
        fastest = min(anchors)
        notes.append(f"{fastest / r['ours']:.2f}x vs fastest" + ("" if r["ours"] <= fastest * 1.05 else " MISS"))
    if method in GRADIENT_CAMS:
        notes.append("<=1.3x fwd " + ("ok" if r["ours"] <= 1.3 * r["forward"] else "MISS"))
    if method in ("scorecam", "ablationcam") and "pytorch-grad-cam" in r:
        notes.append(">=2x pgc " + ("ok" if r["pytorch-grad-cam"] >= 2 * r["ours"] else "MISS"))
    return "; ".join(notes)


def methods_table(arch: str, methods: list[str], rounds: int) -> None:
    torch.manual_seed(0)
    bundle = ng.build_model(arch, ["a", "b", "c"], in_channels=3, input_size=224)
    bundle.model.eval()
    x = bundle_tensor(bundle, [np.random.default_rng(0).random((224, 224, 3)).astype(np.float32)])
    print(f"\n### {arch}, one 224 x 224 RGB image, layer {bundle.target_layer}\n")
    print("| method | family | forward ms | ours ms | ours / forward | " + " | ".join(f"{lib} ms" for lib in LIBRARIES)
          + " | fastest anchor / ours; targets |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(LIBRARIES) + "---|")
    notes = []
    for method in methods:
        spec = get_method(method)
        variants = [("", {})]
        if spec.extra.get("precision"):  # screened in bfloat16 by default: the float32 passes too, and how they differ
            variants.append((", float32 passes", {"precision": "float32"}))
            notes.append(precision_note(bundle, spec, x))
        for label, options in variants:
            r = method_row(bundle, method, x, rounds, **options)
            cells = [f"{r[lib] * 1e3:.0f}" if lib in r else "-" for lib in LIBRARIES]
            print(f"| {spec.title}{label} | {spec.family} | {r['forward'] * 1e3:.1f} | {r['ours'] * 1e3:.0f} | "
                  f"{r['ours'] / r['forward']:.2f}x | " + " | ".join(cells) + f" | {_verdict(method, r)} |", flush=True)
    for note in notes:
        print(f"\n{note}")


def precision_note(bundle, spec, x) -> str:
    """How far the default (screened) map is from the all-float32 one, and what ran in float32."""
    from napari_gradcam.engine.methods.perturbation import scorecam as screen

    layers = [bundle.target_layer]
    counted: list[int] = []
    refine = screen.refine

    def counting(*args, **kwargs):
        out = refine(*args, **kwargs)
        counted.append(out[1])
        return out

    screen.refine = counting
    try:
        fast = spec.compute(bundle, x, [TARGET], layers)
    finally:
        screen.refine = refine
    exact = spec.compute(bundle, x, [TARGET], layers, precision="float32")
    a, b = (m.maps[0, 0].float() / m.maps[0, 0].max().clamp_min(1e-30) for m in (exact, fast))
    how = (f"{counted[0]} of the channels recomputed in float32" if counted
           else "every pass in float32 (no native bfloat16 here)")
    return (f"{spec.title} default vs float32 passes: largest difference {float((a - b).abs().max()):.5f} "
            f"of the map's peak; {how}; precision auto = {screen.resolve_precision('auto', x.device)}.")


# ----------------------------------------------------------------------------- tiling and shifts
def tiling(rounds: int, size: int) -> None:
    from napari_gradcam.phantoms import make_mosaic

    torch.manual_seed(0)
    b = ng.build_model("resnet18", ["normal", "pneumonia", "covid"], in_channels=1, input_size=224)
    image, _ = make_mosaic((size, size), tile=512, seed=0)
    fns = {
        "per-tile loop": lambda: tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=1),
        "batched (16)": lambda: tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=16),
        "fully convolutional": lambda: tiled_heatmaps(b, image, tile=224, mode="fullconv"),
    }
    t = interleaved(fns, rounds)
    tiles = tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=64).tiles
    print(f"\n## Tiled CAM heatmaps, {size}x{size} image, resnet18, 224 px tiles, 50% overlap ({tiles} tiles)\n")
    print("| path | seconds | megapixels/s | speed-up vs per-tile loop |\n|---|---|---|---|")
    for name, sec in t.items():
        print(f"| {name} | {sec:.2f} | {size * size / 1e6 / sec:.2f} | {t['per-tile loop'] / sec:.2f}x |")


def shifts_cost(rounds: int) -> None:
    from napari_gradcam.data import demo_model_path
    from napari_gradcam.phantoms import make_xray

    image = make_xray("pneumonia", size=512, seed=3).image
    torch.manual_seed(0)
    models = {"demo simple_cnn (128 px)": ng.load_model(demo_model_path(), device="cpu"),
              "resnet18 (224 px)": ng.build_model("resnet18", ["a", "b", "c"], in_channels=1, input_size=224)}
    cols = ["shifts=2", "shifts=4", "16 plain calls"]
    print("\n## Shift-averaged Grad-CAM, 512x512 grayscale image: time / plain explain()\n")
    print("| model | plain ms | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for name, b in models.items():
        r = interleaved({
            "plain": lambda b=b: explain(b, image, "gradcam"),
            "shifts=2": lambda b=b: explain(b, image, "gradcam", shifts=2),
            "shifts=4": lambda b=b: explain(b, image, "gradcam", shifts=4),
            "16 plain calls": lambda b=b: [explain(b, image, "gradcam") for _ in range(16)],
        }, rounds)
        p = r["plain"]
        print(f"| {name} | {p * 1e3:.1f} | " + " | ".join(f"{r[c] / p:.2f}x ({r[c] * 1e3:.0f} ms)" for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", help="default: every registered method")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per method (slow methods: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiling", action="store_true", help="also the tiled-heatmap section")
    parser.add_argument("--shifts", action="store_true", help="also the shift-averaging section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [get_method(m).name for m in args.methods] if args.methods else [m["name"] for m in ng.list_methods()]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, device cpu, "
          f"load average at start {load[0]:.2f}")
    print("\n## Each method's time for one image, next to a forward pass and the anchor libraries\n")
    for arch in args.archs:
        methods_table(arch, methods, args.rounds)
    if args.tiling:
        tiling(max(2, args.rounds), 2048)
    if args.shifts:
        shifts_cost(max(3, args.rounds))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nload average at the end {load[0]:.2f}")


if __name__ == "__main__":
    main()
