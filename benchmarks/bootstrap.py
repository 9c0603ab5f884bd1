"""What do 1,000 bootstrap resamples cost next to one evaluation pass?

Predictions of a few thousand images (synthetic scores of a decent classifier: AUC about 0.9; two and
three classes; three images per patient), then, in one run and side by side:

* one evaluation pass: :func:`napari_gradcam.metrics.classification_report` (scikit-learn), no intervals;
* the vectorised bootstrap of every figure (:func:`napari_gradcam.stats.classification_intervals`):
  1,000 resamples by image and by patient, from one (B, N) weight matrix;
* the plain way: :func:`classification_report` on each of the same 1,000 materialised resamples
  (a Python loop of scikit-learn calls), and a loop of ``roc_auc_score(..., sample_weight=w)`` alone;
* a check that the vectorised figures equal the loop's (largest difference printed).

The model's forward pass is not timed: it is the same either way and, on a CPU, far costlier than both.
Run: ``python benchmarks/bootstrap.py [--n 3000] [--resamples 1000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_gradcam.metrics import classification_report
from napari_gradcam.stats import Bootstrap, classification_intervals, resample_weights
from napari_gradcam.stats.bootstrap import classification_samples


def predictions(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), probabilities (n, k)) of a classifier with ROC AUC about 0.9."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.8
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def loop(y, p, classes, w) -> dict[str, np.ndarray]:
    """classification_report on every materialised resample (the way without the weight matrix)."""
    acc, auc = [], []
    for row in w:
        idx = np.repeat(np.arange(row.size), row)
        r = classification_report(y[idx], p[idx], classes)
        acc.append(r["accuracy"])
        auc.append(np.nan if r["roc_auc"] is None else r["roc_auc"])
    return {"accuracy": np.array(acc), "roc_auc": np.array(auc)}


def auc_loop(y, p, w) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    if p.shape[1] == 2:
        return np.array([roc_auc_score(y, p[:, 1], sample_weight=row) for row in w])
    return np.array([roc_auc_score(y, p, multi_class="ovr", sample_weight=row) for row in w])


def run(n: int, k: int, resamples: int) -> None:
    y, p = predictions(n, k)
    classes = [f"class{i}" for i in range(k)]
    patients = [str(i // 3) for i in range(n)]
    t_pass, _ = timed(lambda: classification_report(y, p, classes))
    t_img, _ = timed(lambda: classification_intervals(y, p, classes, None, Bootstrap(resamples)))
    t_pat, _ = timed(lambda: classification_intervals(y, p, classes, None, Bootstrap(resamples, groups=patients)))
    w = resample_weights(n, resamples, 0)
    t_loop, slow = timed(lambda: loop(y, p, classes, w), repeat=1)
    t_auc, _ = timed(lambda: auc_loop(y, p, w), repeat=1)
    fast = classification_samples(w, y, p, p.argmax(1), classes)
    diff = max(np.nanmax(np.abs(fast[key] - slow[key])) for key in ("accuracy", "roc_auc"))
    print(f"\n{n} predictions, {k} classes, {resamples} resamples (best of 3; loops once)")
    rows = [("one evaluation pass (classification_report)", t_pass),
            ("bootstrap, vectorised, by image", t_img),
            ("bootstrap, vectorised, by patient (3 images each)", t_pat),
            ("bootstrap, loop of classification_report", t_loop),
            ("loop of roc_auc_score(sample_weight) alone", t_auc)]
    for name, t in rows:
        print(f"  {name:<52} {t:8.3f} s  {t / t_pass:8.1f} x one pass  {t / t_img:7.2f} x vectorised")
    print(f"  largest difference, vectorised vs loop (accuracy, ROC AUC): {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    for k in (2, 3):
        run(args.n, k, args.resamples)


if __name__ == "__main__":
    main()
