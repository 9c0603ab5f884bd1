"""Which CAM points at SMALL findings?  Last-block Grad-CAM against fine multi-layer LayerCAM.

A synthetic set of ours: phantom chest X-rays (``napari_gradcam.phantoms``) that are either normal
or carry one small round opacity (a "nodule": a soft disc of radius 0.067 x the image side, about
1.4 % of the image, placed inside a lung).  A ``simple_cnn`` is trained on it with our training
code (``napari_gradcam.train``, the same as ``napari-gradcam train``) to tell the two apart; then,
on fresh test images with a nodule, each method's heatmap for the "nodule" class is scored by the
pointing game: the map's maximum inside the nodule, and within 15 px of it (at 224 px scale).

Run: ``python benchmarks/small_findings.py [--size 128] [--n-train 400] [--n-test 100] [--epochs 30]
[--seed 0] [--shifts 1,4] [--work DIR] [--json OUT]`` (about 25 minutes on one CPU core at 128 px).  Prints a table (method, layer, inside %, within 15 px %).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import napari_gradcam as ng
from napari_gradcam.localisation import pointing_game
from napari_gradcam.phantoms import make_xray

CLASSES = ("normal", "nodule")
AREA = 0.014  # the nodule's share of the image


def nodule_xray(size: int, seed: int, with_nodule: bool) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) uint8 phantom and its bool mask: the normal phantom of ``seed``, plus a nodule
    centred at a random point of a lung (where that patient's pneumonia would be)."""
    normal = make_xray("normal", size=size, seed=seed).image
    mask = np.zeros((size, size), bool)
    if not with_nodule:
        return normal, mask
    rng = np.random.default_rng(10_000 + seed)
    lung = make_xray("pneumonia", size=size, seed=seed).mask
    r = np.sqrt(AREA / np.pi) * size
    ys, xs = np.nonzero(lung)
    k = rng.integers(len(ys))
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - ys[k], xx - xs[k])
    mask = d <= r
    blob = np.clip((r + 1.5 - d) / 3.0, 0, 1) * rng.uniform(45, 70)  # soft edge, 45-70 grey levels brighter
    return np.clip(normal + blob, 0, 255).astype(np.uint8), mask


def write_training_set(root: Path, n: int, size: int) -> None:
    from skimage import io

    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for label in CLASSES:
            img, _ = nodule_xray(size, seed=i, with_nodule=label == "nodule")
            io.imsave(root / label / f"p{i:05d}_{label}.png", img, check_contrast=False)


def train_model(work: Path, n: int, size: int, epochs: int, lr: float = 1e-3, seed: int = 0) -> "ng.ModelBundle":
    from napari_gradcam.train import TrainConfig, run_training

    data = work / "train"
    if not data.exists():
        write_training_set(data, n, size)
    out = work / "nodules.safetensors"
    if not out.exists():
        cfg = TrainConfig(data_dir=str(data), out=str(out), arch="simple_cnn", image_size=size, epochs=epochs,
                          batch_size=16, lr=lr, pretrained=False, device="cpu", patience=None, seed=seed)
        def report(event) -> None:
            if event.kind == "epoch":
                m = event.metrics
                print(f"  epoch {event.epoch}: val accuracy {m['accuracy']:.3f}, loss {m['val_loss']:.3f}", file=sys.stderr)

        run_training(cfg, callback=report)
    return ng.load_model(out)


def candidates(bundle) -> list[tuple[str, object, str]]:
    """(method, layer, fusion) to score: last-block maps, single finer stages, the fused presets."""
    from napari_gradcam.engine.layer_choice import fine_layers

    fine = fine_layers(bundle)
    out = [(m, None, "mean") for m in ("cam", "gradcam", "gradcam++", "hirescam", "layercam", "eigencam")]
    out += [(m, name, "mean") for name in fine[:-1] for m in ("gradcam", "hirescam", "layercam")]
    out += [("layercam-fine", None, "mean"), ("layercam-fine", None, "max")]
    out += [(m, "fine", "mean") for m in ("gradcam", "gradcam++", "hirescam")]
    return out


def score(bundle, n_test: int, size: int, shifts: int) -> list[dict]:
    tol = 15 * size / 224
    rows = []
    tests = [nodule_xray(size, seed=1_000_000 + i, with_nodule=True) for i in range(n_test)]
    for method, layer, fusion in candidates(bundle):
        inside = near = 0
        t0 = time.perf_counter()
        for img, mask in tests:
            h = ng.explain(bundle, img, method, target="nodule", layer=layer, shifts=shifts, fusion=fusion)
            inside += pointing_game(h.data, mask)
            near += pointing_game(h.data, mask, tolerance=tol)
        rows.append({"method": method, "layer": h.layer, "fusion": fusion if "+" in h.layer else "", "shifts": shifts,
                     "inside": inside / n_test, "within_15px": near / n_test,
                     "seconds_per_image": (time.perf_counter() - t0) / n_test})
        r = rows[-1]
        print(f"{method:15s} {r['layer']:55s} {r['fusion']:4s} shifts {shifts}  inside {100 * r['inside']:5.1f} %   "
              f"within 15 px {100 * r['within_15px']:5.1f} %   {1000 * r['seconds_per_image']:.0f} ms/img", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=400, help="images per class")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, split, augmentation)")
    p.add_argument("--shifts", default="1", help="comma-separated shifts values to score")
    p.add_argument("--work", default="small_findings_work")
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = train_model(work, args.n_train, args.size, args.epochs, seed=args.seed)
    print(f"model: {bundle}")
    rows = []
    for k in [int(s) for s in args.shifts.split(",")]:
        rows += score(bundle, args.n_test, args.size, k)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
