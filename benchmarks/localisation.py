"""Do the demo model's heatmaps point at the lesions?  CAM, Grad-CAM and Grad-CAM++ on phantoms.

200 fresh synthetic chest X-rays with lesions (100 lobar pneumonia, 100 bilateral ground glass;
512 x 512 px like the sample data; seeds never used for training), each explained for its TRUE
class with the demo model (``napari_gradcam.data.demo_model_path()``), scored against the
lesion mask:

* pointing game: the heatmap's maximum on the lesion (and within ``--tolerance`` px of it);
* energy inside the lesion, the lesion's share of the image, and their ratio (1 = chance);
* IoU / Dice of the heatmap thresholded by Otsu and at 0.5 of its maximum;
* on a ``--curves-n`` subset: deletion and insertion AUC (the true class's probability as the
  most relevant pixels are removed / added, ``--baseline`` image).

Target: pointing game >= 95 % and energy inside >= 3 x the lesion's share.
Each with plain maps and with 4 x 4 sub-cell shifts averaged (``explain(..., shifts=4)``): the demo
model's map is 16 x 16 cells, so a plain map's maximum can only sit at a cell centre.
Run: ``python benchmarks/localisation.py [--n 200] [--curves-n 40] [--shifts 1,4] [--model PATH] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import napari_gradcam as ng
from napari_gradcam.data import demo_model_path
from napari_gradcam.localisation import LocalisationReport, evaluate_localisation
from napari_gradcam.phantoms import make_xray

LESIONS = ("pneumonia", "covid")


def phantoms(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
    """n phantoms alternating the lesion classes, seeds seed, seed + 1, ..."""
    images, masks, labels, names = [], [], [], []
    for i in range(n):
        label = LESIONS[i % len(LESIONS)]
        p = make_xray(label, size=size, seed=seed + i)
        images.append(p.image)
        masks.append(p.mask)
        labels.append(label)
        names.append(f"{label}_{seed + i}")
    return images, masks, labels, names


def merge(full: LocalisationReport, curves: LocalisationReport) -> LocalisationReport:
    """Add the subset's deletion/insertion AUCs to the full report's rows (same images, same methods)."""
    by_key = {(r.name, r.method): r.metrics for r in curves.rows}
    for r in full.rows:
        extra = by_key.get((r.name, r.method))
        if extra is not None:
            r.metrics["deletion_auc"] = extra["deletion_auc"]
            r.metrics["insertion_auc"] = extra["insertion_auc"]
    full.settings.update({k: curves.settings[k] for k in ("steps", "baseline")})
    full.notes.append(f"Deletion/insertion AUCs are means over the first {curves.n_evaluated} images only.")
    return full


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(demo_model_path()), help="model file (default: the demo model)")
    ap.add_argument("--n", type=int, default=200, help="phantoms with lesions")
    ap.add_argument("--size", type=int, default=512, help="phantom size in pixels")
    ap.add_argument("--seed", type=int, default=10_000, help="first phantom seed")
    ap.add_argument("--curves-n", type=int, default=40, help="images for deletion/insertion (0: none)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--baseline", default="blur", choices=("blur", "mean", "zero"))
    ap.add_argument("--tolerance", type=float, default=15, help="pointing-game tolerance in pixels")
    ap.add_argument("--methods", default="cam,gradcam,gradcam++")
    ap.add_argument("--shifts", default="1,4", help="sub-cell shifts to compare (1 = plain maps)")
    ap.add_argument("--json", default=None, help="write the per-image report here")
    args = ap.parse_args(argv)

    bundle = ng.load_model(args.model, device="auto")
    missing = [c for c in LESIONS if c not in bundle.classes]
    if missing:
        print(f"The model's classes {bundle.classes} lack {missing}; it is not a phantom model.", file=sys.stderr)
        return 2
    methods = [m for m in args.methods.split(",") if m]
    shift_values = [int(k) for k in args.shifts.split(",") if k]
    t0 = time.perf_counter()
    images, masks, labels, names = phantoms(args.n, args.size, args.seed)
    t_gen = time.perf_counter() - t0
    probs = ng.predict(bundle, images)
    acc = float(np.mean([bundle.classes[int(p.argmax())] == lab for p, lab in zip(probs, labels)]))

    share = float(np.mean([m.mean() for m in masks]))
    print(f"model: {args.model} ({bundle.architecture}, {bundle.input_size} px, classes {bundle.classes}, "
          f"device {bundle.device})")
    print(f"{args.n} phantoms ({', '.join(LESIONS)} alternating), {args.size} px, seeds {args.seed}.."
          f"{args.seed + args.n - 1}; generated in {t_gen:.1f} s; model accuracy on them {100 * acc:.1f} %; "
          f"mean lesion share {share:.3f}")
    reports = {}
    for shifts in shift_values:
        t0 = time.perf_counter()
        report = evaluate_localisation(bundle, images, masks, methods=methods, target="label", labels=labels,
                                       names=names, tolerance=args.tolerance, level=0.5, shifts=shifts)
        t_maps = time.perf_counter() - t0
        t_curves = 0.0
        k = min(args.curves_n, args.n)
        if k > 0:
            t0 = time.perf_counter()
            curves = evaluate_localisation(bundle, images[:k], masks[:k], methods=methods, target="label",
                                           labels=labels[:k], names=names[:k], curves=True, steps=args.steps,
                                           baseline=args.baseline, tolerance=args.tolerance, shifts=shifts)
            t_curves = time.perf_counter() - t0
            report = merge(report, curves)
        reports[shifts] = report
        print()
        print(f"## shifts = {shifts} ({'plain maps' if shifts == 1 else f'{shifts} x {shifts} sub-cell shifts averaged'})")
        print(f"heatmaps + metrics: {t_maps:.1f} s; deletion/insertion ({k} images, {args.steps} steps, "
              f"{args.baseline} baseline): {t_curves:.1f} s")
        print()
        print(report.table(markdown=True))
        print()
        summary = report.summary()
        for m in report.methods:
            s = summary[m]
            ok_p = s["pointing"] >= 0.95
            ok_e = s["energy_ratio"] is not None and s["energy"] >= 3 * s["mask_share"]
            print(f"{m:10s} pointing {100 * s['pointing']:.1f} % ({'meets' if ok_p else 'misses'} >= 95 %), "
                  f"energy {s['energy']:.3f} = {s['energy'] / s['mask_share']:.2f} x the lesion share "
                  f"({'meets' if ok_e else 'misses'} >= 3 x)")
        print("per lesion class (pointing %, energy ratio):")
        for lab in LESIONS:
            rows = [r for r in report.rows if r.target == lab]
            print(f"  {lab:10s} " + "  ".join(
                f"{m}: {100 * np.mean([r.metrics['pointing'] for r in rows if r.method == m]):.1f} %, "
                f"{np.mean([r.metrics['energy_ratio'] for r in rows if r.method == m]):.2f}"
                for m in report.methods))
    if args.json:
        for shifts, report in reports.items():
            path = args.json if len(reports) == 1 else args.json.replace(".json", f"_shifts{shifts}.json")
            report.to_json(path)
            print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
