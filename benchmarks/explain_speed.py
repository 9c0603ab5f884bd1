"""Explanation speed, measured side by side in one run.

1. Grad-CAM time / forward-pass time at the last conv block, for resnet18, resnet50 and
   mobilenet_v2 (one 224 x 224 RGB image), for napari-gradcam (the engine on a tensor, and
   ``explain()`` end to end from a numpy image), pytorch-grad-cam and torchcam.
2. Tiled heatmaps of a 2048 x 2048 image at 50% overlap with resnet18 (1 channel, 224 px
   tiles): a per-tile loop (the seed approach: one tile per forward pass), our batched path,
   and the fully convolutional path; seconds and megapixels/s.
3. Shift-averaged Grad-CAM (``explain(..., shifts=k)``, k x k shifted copies in one batch) / plain
   ``explain()``, next to a loop of k x k separate ``explain()`` calls, for the demo model and
   resnet18 on a 512 x 512 grayscale image.

Times are medians over interleaved repeats (each method runs once per round), so machine
noise hits all methods alike.  Run: ``python benchmarks/explain_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

import napari_gradcam as ng
from napari_gradcam.engine import explain, tiled_heatmaps
from napari_gradcam.engine.core import gradient_maps
from napari_gradcam.engine.gradient import family_member
from napari_gradcam.preprocess import bundle_tensor


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
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


def gradcam_vs_forward(arch: str, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    b = ng.build_model(arch, ["a", "b", "c"], in_channels=3, input_size=224)
    layer = b.target_layer
    image = np.random.default_rng(0).random((224, 224, 3)).astype(np.float32)
    x = bundle_tensor(b, [image])
    target = 1

    def forward():
        with torch.inference_mode():
            b.model(x)

    fns = {
        "forward": forward,
        "ours (engine)": lambda: gradient_maps(b.model, x, [target], [layer], family_member("gradcam")),
        "ours (explain)": lambda: explain(b, image, "gradcam", target=target),
    }
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        m1 = copy.deepcopy(b.model)
        pgc = GradCAM(model=m1, target_layers=[m1.get_submodule(layer)])
        fns["pytorch-grad-cam"] = lambda: pgc(input_tensor=x, targets=[ClassifierOutputTarget(target)])
    except ImportError:  # pragma: no cover
        pgc = None
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        m2 = copy.deepcopy(b.model)
        tc = TCGradCAM(m2, target_layer=layer)

        def torchcam_run():
            out = m2(x)
            tc(target, out)
            m2.zero_grad(set_to_none=True)

        fns["torchcam"] = torchcam_run
    except ImportError:  # pragma: no cover
        tc = None
    result = interleaved(fns, rounds)
    if tc is not None:
        tc.remove_hooks()
    return result


def tiling(rounds: int, size: int) -> dict[str, float]:
    from napari_gradcam.phantoms import make_mosaic

    torch.manual_seed(0)
    b = ng.build_model("resnet18", ["normal", "pneumonia", "covid"], in_channels=1, input_size=224)
    image, _ = make_mosaic((size, size), tile=512, seed=0)
    fns = {
        "per-tile loop": lambda: tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=1),
        "batched (16)": lambda: tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=16),
        "fully convolutional": lambda: tiled_heatmaps(b, image, tile=224, mode="fullconv"),
    }
    tiles = tiled_heatmaps(b, image[:448, :448], tile=224, overlap=0.5).tiles  # warm-up + sanity
    result = interleaved(fns, rounds, warmup=1)
    result["_tiles"] = float(tiled_heatmaps(b, image, tile=224, overlap=0.5, batch_size=64).tiles) if tiles else 0.0
    return result


def shifts_cost(rounds: int) -> dict[str, dict[str, float]]:
    """Seconds of explain() plain, with shifts=2 and 4 (batched), and a loop of 16 plain calls."""
    from napari_gradcam.data import demo_model_path
    from napari_gradcam.phantoms import make_xray

    image = make_xray("pneumonia", size=512, seed=3).image
    torch.manual_seed(0)
    models = {"demo simple_cnn (128 px)": ng.load_model(demo_model_path(), device="cpu"),
              "resnet18 (224 px)": ng.build_model("resnet18", ["a", "b", "c"], in_channels=1, input_size=224)}
    out = {}
    for name, b in models.items():
        def loop16(b=b):
            for _ in range(16):
                explain(b, image, "gradcam")
        out[name] = interleaved({
            "plain": lambda b=b: explain(b, image, "gradcam"),
            "shifts=2": lambda b=b: explain(b, image, "gradcam", shifts=2),
            "shifts=4": lambda b=b: explain(b, image, "gradcam", shifts=4),
            "16 plain calls": loop16,
        }, rounds, warmup=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller tiled image (for a smoke run)")
    args = parser.parse_args()
    rounds = 3 if args.quick else 15
    size = 1024 if args.quick else 2048
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")

    print("## Grad-CAM time / forward-pass time (one 224x224 RGB image, last conv block)\n")
    names = ["ours (engine)", "ours (explain)", "pytorch-grad-cam", "torchcam"]
    print("| model | forward ms | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for arch in ["resnet18", "resnet50", "mobilenet_v2"]:
        r = gradcam_vs_forward(arch, rounds)
        f = r["forward"]
        cells = [f"{r[n] / f:.2f}x ({r[n] * 1e3:.0f} ms)" if n in r else "n/a" for n in names]
        print(f"| {arch} | {f * 1e3:.1f} | " + " | ".join(cells) + " |")

    print(f"\n## Tiled CAM heatmaps, {size}x{size} image, resnet18, 224 px tiles, 50% overlap\n")
    t = tiling(max(2, rounds // 5), size)
    mp = size * size / 1e6
    loop = t["per-tile loop"]
    print("| path | seconds | megapixels/s | speed-up vs per-tile loop |")
    print("|---|---|---|---|")
    for name in ["per-tile loop", "batched (16)", "fully convolutional"]:
        print(f"| {name} | {t[name]:.2f} | {mp / t[name]:.2f} | {loop / t[name]:.2f}x |")
    print(f"\n{int(t['_tiles'])} tiles per run; fully convolutional vs batched tiling: "
          f"{t['batched (16)'] / t['fully convolutional']:.2f}x faster")

    print("\n## Shift-averaged Grad-CAM, 512x512 grayscale image: time / plain explain()\n")
    cols = ["shifts=2", "shifts=4", "16 plain calls"]
    print("| model | plain ms | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, r in shifts_cost(max(3, rounds // 3)).items():
        p = r["plain"]
        print(f"| {name} | {p * 1e3:.1f} | " + " | ".join(f"{r[c] / p:.2f}x ({r[c] * 1e3:.0f} ms)" for c in cols) + " |")


if __name__ == "__main__":
    main()
