"""Unlearning a planted shortcut, both ways: figures before and after, side by side, in one run.

The data (``tests/unlearn_helpers.py``): 48 px films of two classes, "clear" and "lesion" (a faint blob); a
side-letter marker (a bright "L" on a dark label, top-left corner) on a share of the training lesion films
only.  A ``simple_cnn`` is trained through the project's trainer (``napari_gradcam.train``, the code of
``napari-gradcam train``); an audit folder names the marked films as a cluster with the marker's box.  Then:

* A-ClArC: the same recipe retrained with ``unlearn=AUDIT:ID`` (the marker pasted into every class);
* P-ClArC: ``ng.unlearn(model, AUDIT:ID)`` (projection at the box's cells of the audit's layer, the last
  convolutional block), the classic variant projecting at every position (``everywhere=True``), and the
  projection at the box's cells of an early layer (``layer="features.block2"``, 12 x 12 cells at 48 px).

For each model: insertion (the marker pasted from marked training films into clean held-out "clear" films:
predictions moved to "lesion") and its control (the same films' content from the opposite corner), removal
(the box filled with the film's median in the marked films: changed predictions) and its control, clean
held-out accuracy, and the time each way took.  Insertion rates carry Wilson 95 % intervals.

Run: ``python benchmarks/unlearn.py [--n-train 300] [--n-test 200] [--share 0.7] [--epochs 10] [--seeds 0,1]
[--work DIR]`` (about 2 minutes per seed on one CPU core).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import napari_gradcam as ng  # noqa: E402
import unlearn_helpers as H  # noqa: E402
from napari_gradcam.generators import run_to_end  # noqa: E402
from napari_gradcam.train import TrainConfig, train  # noqa: E402
from napari_gradcam.unlearn.proof import wilson_interval  # noqa: E402


def fit(data, out: Path, epochs: int, seed: int, **kw):
    cfg = TrainConfig(data_dir=str(data["train"]), out=str(out), image_size=48, epochs=epochs, batch_size=16,
                      lr=3e-3, augment=False, device="cpu", group_pattern="none", max_minutes=0, bn_batches=0,
                      seed=seed, **kw)
    t0 = time.perf_counter()
    run_to_end(train(cfg))
    return ng.load_model(out, device="cpu"), time.perf_counter() - t0


def figures(bundle, data, donors, recipients) -> dict:
    t = H.PasteTester()
    return {"ins": t.insertion_test(bundle, donors, recipients, H.BOX, 1),
            "rem": t.removal_test(bundle, donors, H.BOX, 1), "acc": H.accuracy(bundle, data["test_dir"])}


def row(name: str, f: dict, seconds: float | None, before: dict | None) -> str:
    ins, rem = f["ins"], f["rem"]
    lo, hi = wilson_interval(ins["moved"], ins["n"])
    ratio = f"{ins['moved'] / before['ins']['moved']:.2f}" if before and before["ins"]["moved"] else "-"
    dacc = f"{100 * (f['acc'] - before['acc']):+.1f}" if before else ""
    took = f"{seconds:.1f}" if seconds is not None else "-"
    return (f"{name:<26} {ins['rate']:>6.3f} [{lo:.3f}, {hi:.3f}] {ins['control']['rate']:>7.3f} {ratio:>6} "
            f"{rem['rate']:>7.3f} {rem['control']['rate']:>7.3f} {f['acc']:>6.3f} {dacc:>6} {took:>7}")


def run_seed(work: Path, args, seed: int) -> None:
    data = H.make_data(work / "data", n_train=args.n_train, n_test=args.n_test, share=args.share, seed=seed)
    model, t_train = fit(data, work / "m.safetensors", args.epochs, seed)
    audit = H.write_audit(work / "audit", data, model.target_layer)
    donors = H.read(data["planted"][:100])
    recipients = H.read(sorted((data["test_dir"] / "clear").glob("*.png")))
    before = figures(model, data, donors, recipients)
    t0 = time.perf_counter()
    p_box = ng.unlearn(model, f"{audit}:3")
    t_p = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_all = ng.unlearn(model, f"{audit}:3", everywhere=True)
    t_pall = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_early = ng.unlearn(model, f"{audit}:3", layer=args.early_layer)
    t_early = time.perf_counter() - t0
    a_model, t_a = fit(data, work / "a.safetensors", args.epochs, seed, unlearn=f"{audit}:3", unlearn_p=0.5)
    print(f"\nseed {seed}: {args.n_train} training films per class ({args.share:.0%} of 'lesion' marked), "
          f"{args.n_test} clean held-out films per class, simple_cnn 48 px, {args.epochs} epochs")
    print(f"{'model':<26} {'insertion [95% CI]':>24} {'control':>7} {'ratio':>6} {'removal':>7} {'control':>7} "
          f"{'acc':>6} {'d acc':>6} {'time s':>7}")
    print(row("original", before, t_train, None))
    print(row("A-ClArC (retrained)", figures(a_model, data, donors, recipients), t_a, before))
    print(row("P-ClArC (box)", figures(p_box, data, donors, recipients), t_p, before))
    print(row("P-ClArC (everywhere)", figures(p_all, data, donors, recipients), t_pall, before))
    print(row(f"P-ClArC ({args.early_layer})", figures(p_early, data, donors, recipients), t_early, before))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--share", type=float, default=0.7)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--early-layer", default="features.block2", help="an early layer for a third P-ClArC row")
    args = ap.parse_args()
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            work = (args.work / f"seed{seed}") if args.work else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            run_seed(work, args, seed)
    print("\nratio: moved predictions after / before (goal <= 0.2); d acc: clean accuracy change in points "
          "(goal >= -1); time: training (original, A-ClArC) or unlearn() (P-ClArC).")


if __name__ == "__main__":
    main()
