"""Train the default recipe from scratch on the Kermany pneumonia set, on the CPU, and measure it on held-out patients.

    python benchmarks/train_pneumonia.py [--data ../shared/data/chest_xray_pneumonia_224/train]
                                         [--max-minutes 15] [--threads 2] [--probe]

The recipe is ``TrainConfig``'s defaults, as ``napari-gradcam train DATA --out M.safetensors`` runs it
(simple_cnn at 128 px, AdamW 2e-3 with a cosine schedule that follows the clock of a 15-minute budget,
label smoothing 0.1, balanced class weights, statistics-preserving augmentation, precise BatchNorm
statistics, the epoch of lowest validation loss kept, a decision threshold chosen on validation).

Validation holds out whole patients (20 % of each class's patients, grouped by the patient id in the file
name).  Prints wall time (decode, training, whole run), the machine's load average before and after,
training throughput, and accuracy, balanced accuracy, ROC AUC, sensitivity and specificity of the best
checkpoint on the held-out patients, re-evaluated from the image files through the public prediction path,
at the arg-max and at the stored threshold (chosen on these same patients: optimistic).  It then repeats the
evaluation on shifted copies of the held-out images (gamma, noise, blur, crop: a proxy for another
hospital's films, not a substitute for Kermany's test split).  ``--probe`` adds the throughput of our
training loop next to a bare PyTorch loop on the same model, batches and optimizer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = next((d / "shared" / "data" / "chest_xray_pneumonia_224" / "train" for d in ROOT.parents
                     if (d / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")

#: Shifted copies of the held-out images: name -> function of a (H, W) float image in [0, 1].
SHIFTS = {
    "as recorded": lambda im: im,
    "gamma 0.67 (brighter)": lambda im: im ** 0.67,
    "gamma 1.5 (darker)": lambda im: im ** 1.5,
    "noise (sigma 0.03)": lambda im: im + np.random.default_rng(0).normal(0, 0.03, im.shape),
    "blur (sigma 1.5 px)": lambda im: _blur(im, 1.5),
    "central crop 85 %": lambda im: _crop(im, 0.85),
}


def _blur(im, sigma):
    from scipy import ndimage

    return ndimage.gaussian_filter(im, sigma)


def _crop(im, share):
    h, w = im.shape[:2]
    dy, dx = int(h * (1 - share) / 2), int(w * (1 - share) / 2)
    return im[dy : h - dy, dx : w - dx]


def shifted_reports(bundle, data, threshold):
    """Classification reports of ``bundle`` on every shift of the images of ``data``: {shift: (at the
    arg-max, at ``threshold``)}."""
    from napari_gradcam import predict
    from napari_gradcam.data import read_image
    from napari_gradcam.metrics import classification_report
    from napari_gradcam.preprocess import to_channels, to_unit

    images = [to_channels(to_unit(read_image(p)), 1)[0] for p in data.paths]
    out = {}
    for name, shift in SHIFTS.items():
        probs = predict(bundle, [np.clip(shift(im), 0, 1).astype(np.float32) for im in images], batch_size=128)
        out[name] = tuple(classification_report(data.labels, probs, bundle.classes, threshold=t)
                          for t in (None, threshold))
    return out


def bare_loop(x_all, y_all, batches, arch, lr, weight_decay, n_classes, seed: int = 0) -> float:
    """Images/s of a minimal loop: index in-memory tensors, forward, loss, backward, step."""
    import torch
    import torch.nn.functional as F

    from napari_gradcam.models import build_network

    torch.manual_seed(seed)
    model = build_network(arch, n_classes, 1).train()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n, t0 = 0, None
    for k, ix in enumerate(batches):
        if k == 2:  # warm-up batches excluded
            t0, n = time.perf_counter(), 0
        idx = torch.as_tensor(ix)
        x = x_all[idx].contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        n += len(ix)
    return n / (time.perf_counter() - t0)


def our_loop(cfg_kwargs, data, val, n_batches: int) -> float:
    """Images/s of napari_gradcam.train on the same data (augmentation on), over ``n_batches`` batches."""
    from napari_gradcam.train import TrainConfig, train

    cfg = TrainConfig(**{**cfg_kwargs, "epochs": 1, "steps_per_epoch": n_batches + 2, "bn_batches": 0,
                         "out": str(Path(os.environ.get("TMPDIR", "/tmp")) / "throughput_probe.safetensors")})
    t0 = n = None
    for ev in train(cfg, data, val):
        if ev.kind == "batch":
            if ev.batch == 2:
                t0, n = time.perf_counter(), 0
            elif t0 is not None:
                n += cfg.batch_size
        if ev.kind == "epoch":
            break
    return n / (time.perf_counter() - t0)


def throughput_probe(cfg, tr, va, bundle, batches_n: int, rounds: int) -> tuple[float, float]:
    """(ours, bare) best images/s over ``rounds`` alternating rounds on a subset of the training images."""
    import numpy as np

    from napari_gradcam.data import ImageDataset
    from napari_gradcam.train import epoch_batches

    n_probe = (batches_n + 2) * cfg.batch_size
    probe = tr.subset(np.linspace(0, len(tr) - 1, min(n_probe, len(tr))).round().astype(int))
    ds = ImageDataset(probe, 1, bundle.input_size, bundle.config.mean, bundle.config.std)
    x_all, y_all = ds.tensors()
    batches = epoch_batches(len(ds), cfg.batch_size, probe.labels, "balanced", 0, 1, batches_n + 2)
    kwargs = {k: v for k, v in cfg.recipe().items() if k not in ("out", "resume")}
    bare, ours = [], []
    for _ in range(rounds):  # the machine may be shared: alternate and keep the best of each
        bare.append(bare_loop(x_all, y_all, batches, cfg.arch, cfg.lr, cfg.weight_decay, len(bundle.classes)))
        ours.append(our_loop(kwargs, probe, va.subset([0, len(va) - 1]), batches_n))
    return max(ours), max(bare)


def run(cfg, tr, va):
    """Train; returns (result, wall seconds, seconds before the first batch, epoch throughputs)."""
    from napari_gradcam.train import train

    t0, t_train0, ips = time.perf_counter(), None, []
    gen = train(cfg, tr, va)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value, time.perf_counter() - t0, (t_train0 or t0) - t0, ips
        if ev.kind == "batch" and t_train0 is None:
            t_train0 = time.perf_counter()
        if ev.kind == "load" and ev.batch == ev.n_batches:
            print(f"images decoded into memory in {time.perf_counter() - t0:.1f} s", flush=True)
        if ev.kind == "epoch":
            ips.append(ev.images_per_s)
            print(f"[{ev.elapsed_s:6.0f} s] {ev.message}  ({ev.images_per_s:.0f} img/s)", flush=True)
        if ev.kind in ("warning", "done", "stopped"):
            print(f"[{ev.elapsed_s:6.0f} s] {ev.kind}: {ev.message}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--max-minutes", type=float, default=None, help="time budget (default: the recipe's, 15 on a CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", action="store_true", help="also compare throughput with a bare PyTorch loop")
    ap.add_argument("--out", default="/tmp/pneumonia_benchmark.safetensors")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_gradcam import load_model
    from napari_gradcam.data import scan_folder
    from napari_gradcam.decision import decision_threshold
    from napari_gradcam.metrics import format_report
    from napari_gradcam.train import TrainConfig

    data_dir = Path(args.data)
    if not data_dir.is_dir():
        print(f"no data at {data_dir}; skipping")
        return 0
    load_before = os.getloadavg()
    data = scan_folder(data_dir, group_pattern="auto")
    cfg = TrainConfig(data_dir=str(data_dir), out=args.out, device="cpu", max_minutes=args.max_minutes)
    tr, va = data.split(cfg.val_fraction, seed=cfg.seed)
    print(f"data: {len(data)} images, {len(set(data.groups))} patients; train {tr.class_counts()}, held-out "
          f"patients {va.class_counts()} ({len(set(va.groups) & set(tr.groups))} patients on both sides)", flush=True)
    print("recipe:", cfg.recipe(), flush=True)
    result, wall, t_first, ips = run(cfg, tr, va)
    load_after = os.getloadavg()

    bundle = load_model(result.best_path, device="cpu")
    threshold = decision_threshold(bundle)
    t_ev = time.perf_counter()
    both = shifted_reports(bundle, va, threshold)
    reports = {k: v[0] for k, v in both.items()}
    at_threshold = {k: v[1] for k, v in both.items()}
    t_ev = time.perf_counter() - t_ev
    rep = reports["as recorded"]
    print()
    print(format_report(at_threshold["as recorded"]))
    pos, neg = bundle.classes[-1], bundle.classes[0]
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    rows = [
        ("recipe", f"TrainConfig defaults: {bundle.architecture} at {bundle.input_size} px, batch {cfg.batch_size}, "
                   f"AdamW lr {cfg.lr:g}, label smoothing {cfg.label_smoothing:g}, seed {cfg.seed}"),
        ("CPU", f"{torch.get_num_threads()} torch threads on {os.cpu_count()} cores; load average "
                f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (1-minute)"),
        ("train / held-out images (patients)", f"{len(tr)} ({len(set(tr.groups))}) / {len(va)} ({len(set(va.groups))})"),
        ("wall time: whole run / decoding images / training epochs",
         f"{wall / 60:.1f} / {t_first / 60:.1f} / {(wall - t_first) / 60:.1f} min"),
        ("training throughput (median over epochs)", f"{statistics.median(ips):.0f} images/s"),
        ("epochs run; best epoch (lowest validation loss)", f"{result.epochs_done}; {result.best_epoch} ({result.reason})"),
        ("decision threshold (p of " + pos + ")", "none" if threshold is None else f"{threshold:.3f}"),
        ("accuracy (arg-max / threshold)", f"{pct(rep['accuracy'])} / {pct(at_threshold['as recorded']['accuracy'])}"),
        ("balanced accuracy (arg-max / threshold)",
         f"{pct(rep['balanced_accuracy'])} / {pct(at_threshold['as recorded']['balanced_accuracy'])}"),
        ("ROC AUC", f"{rep['roc_auc']:.3f}"),
        (f"sensitivity {pos} (arg-max / threshold)",
         f"{pct(rep['sensitivity'][pos])} / {pct(at_threshold['as recorded']['sensitivity'][pos])}"),
        (f"specificity {pos}, i.e. {neg} recall (arg-max / threshold)",
         f"{pct(rep['specificity'][pos])} / {pct(at_threshold['as recorded']['specificity'][pos])}"),
        ("evaluation from files (6 shifts)", f"{len(va)} images x 6 in {t_ev:.0f} s"),
    ]
    if args.probe:
        ours, bare = throughput_probe(cfg, tr, va, bundle, 30, 3)
        rows += [("throughput, napari-gradcam loop / bare PyTorch loop", f"{ours:.0f} / {bare:.0f} images/s "
                                                                       f"(ratio {ours / bare:.2f})")]
    print("\n| measure | value |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print("\n| held-out images | accuracy | balanced accuracy | ROC AUC | " + neg + " recall |\n| --- | --- | --- | --- | --- |")
    for name, r in at_threshold.items():
        print(f"| {name} | {pct(r['accuracy'])} | {pct(r['balanced_accuracy'])} | {r['roc_auc']:.3f} | "
              f"{pct(r['specificity'][pos])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
