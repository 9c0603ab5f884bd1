"""Train the default recipe from scratch on the Kermany pneumonia set, on 2 CPU cores.

    python benchmarks/train_pneumonia.py [--data ../shared/data/chest_xray_pneumonia_224/train]
                                         [--image-size 64] [--epochs 10] [--max-minutes 14]

Validation holds out whole patients (20 %, grouped by the patient id in the file name, stratified
by class).  Prints wall time, training throughput, accuracy, balanced accuracy, ROC AUC,
sensitivity and specificity of the best checkpoint on the held-out patients (re-evaluated from the
image files through the public prediction path), and the throughput of our training loop next to a
bare PyTorch loop on the same model, the same batches from the same in-memory tensors and the same
optimizer.  Target: ROC AUC >= 0.95 and accuracy >= 90 % within 15 minutes of training; our loop
within 10 % of the bare loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224" / "train"

# the recipe (also what README quotes)
RECIPE = dict(arch="simple_cnn", in_channels=1, image_size=64, epochs=10, batch_size=32, lr=2e-3,
              optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup_epochs=0.5, augment=True,
              class_weighting="balanced", monitor="balanced_accuracy", patience=None, seed=0, device="cpu")


def bare_loop(x_all, y_all, batches, recipe, n_classes, seed: int = 0) -> float:
    """Images/s of a minimal loop: index in-memory tensors, forward, loss, backward, step."""
    import torch
    import torch.nn.functional as F

    from napari_gradcam.models import build_network

    torch.manual_seed(seed)
    model = build_network(recipe["arch"], n_classes, recipe["in_channels"]).train()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
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

    cfg = TrainConfig(**{**cfg_kwargs, "epochs": 1, "steps_per_epoch": n_batches + 2,
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--image-size", type=int, default=RECIPE["image_size"])
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--lr", type=float, default=RECIPE["lr"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-batches", type=int, default=30)
    ap.add_argument("--probe-rounds", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=14.0, help="time budget for training (stops between epochs)")
    ap.add_argument("--out", default="/tmp/pneumonia_benchmark.safetensors")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from napari_gradcam import load_model
    from napari_gradcam.data import ImageDataset, scan_folder
    from napari_gradcam.metrics import classification_report, format_report
    from napari_gradcam.train import TrainConfig, _batches, evaluate_model, train

    data_dir = Path(args.data)
    if not data_dir.is_dir():
        print(f"no data at {data_dir}; skipping")
        return 0
    recipe = {**RECIPE, "image_size": args.image_size, "epochs": args.epochs, "lr": args.lr,
              "max_minutes": args.max_minutes}
    t_scan = time.perf_counter()
    data = scan_folder(data_dir, group_pattern="auto")
    tr, va = data.split(0.2, seed=0)
    print(f"data: {len(data)} images, {len(set(data.groups))} patients; train {tr.class_counts()}, "
          f"held-out patients {va.class_counts()} ({len(set(va.groups) & set(tr.groups))} patients on both sides); "
          f"scan {time.perf_counter() - t_scan:.1f} s", flush=True)

    # ---- the real run
    cfg = TrainConfig(data_dir=str(data_dir), out=args.out, **recipe)
    print("recipe:", {k: v for k, v in cfg.recipe().items() if k in RECIPE}, flush=True)
    t0 = time.perf_counter()
    t_train0 = None
    gen = train(cfg, tr, va)
    ips = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if ev.kind == "batch" and t_train0 is None:
            t_train0 = time.perf_counter()
        if ev.kind == "load" and ev.batch == ev.n_batches:
            print(f"images decoded into memory in {time.perf_counter() - t0:.1f} s", flush=True)
        if ev.kind == "epoch":
            ips.append(ev.images_per_s)
            print(f"[{ev.elapsed_s:6.0f} s] {ev.message}  ({ev.images_per_s:.0f} img/s)", flush=True)
    wall = time.perf_counter() - t0
    train_wall = time.perf_counter() - (t_train0 or t0)

    # ---- the best checkpoint, re-evaluated from the files on held-out patients
    bundle = load_model(result.best_path, device="cpu")
    t_ev = time.perf_counter()
    probs, y, failed = evaluate_model(bundle, va)
    rep = classification_report(y, probs, bundle.classes)
    t_ev = time.perf_counter() - t_ev

    # ---- throughput: ours vs a bare loop (same model, batches, tensors, optimizer), interleaved
    # on a subset of the training images just large enough for the probe (so it decodes little)
    n_probe = (args.probe_batches + 2) * recipe["batch_size"]
    probe = tr.subset(np.linspace(0, len(tr) - 1, min(n_probe, len(tr))).round().astype(int))
    ds = ImageDataset(probe, 1, recipe["image_size"], bundle.config.mean, bundle.config.std)
    x_all, y_all = ds.tensors()
    batches = _batches(len(ds), recipe["batch_size"], probe.labels, "balanced", 0, 1, args.probe_batches + 2)
    bare, ours = [], []
    for _ in range(args.probe_rounds):  # the machine may be shared: alternate and keep the best of each
        bare.append(bare_loop(x_all, y_all, batches, recipe, len(bundle.classes)))
        ours.append(our_loop({**recipe, "data_dir": str(data_dir)}, probe, va.subset([0, len(va) - 1]),
                             args.probe_batches))
    bare_ips, our_ips = max(bare), max(ours)

    pos = bundle.classes[-1]
    neg = bundle.classes[0]
    print()
    print(format_report(rep))
    print()
    print("| measure | value |")
    print("| --- | --- |")
    rows = [
        ("recipe", f"{recipe['arch']}, {recipe['image_size']} px, {recipe['epochs']} epochs, batch {recipe['batch_size']}, "
                   f"AdamW lr {recipe['lr']:g} cosine, augmentation, balanced class weights, seed 0"),
        ("CPU threads", f"{torch.get_num_threads()}"),
        ("train / held-out images (patients)", f"{len(tr)} ({len(set(tr.groups))}) / {len(va)} ({len(set(va.groups))})"),
        ("wall time, whole run (decode + train + validate)", f"{wall / 60:.1f} min"),
        ("wall time, training epochs", f"{train_wall / 60:.1f} min"),
        ("training throughput (median over epochs)", f"{statistics.median(ips):.0f} images/s"),
        ("epochs run; best epoch (by validation balanced accuracy)", f"{result.epochs_done}; {result.best_epoch}"),
        ("accuracy", f"{100 * rep['accuracy']:.1f} %"),
        ("balanced accuracy", f"{100 * rep['balanced_accuracy']:.1f} %"),
        ("ROC AUC", f"{rep['roc_auc']:.3f}"),
        (f"sensitivity ({pos})", f"{100 * rep['sensitivity'][pos]:.1f} %"),
        (f"specificity ({pos} vs {neg})", f"{100 * rep['specificity'][pos]:.1f} %"),
        ("evaluation from files", f"{len(y)} images in {t_ev:.1f} s ({len(failed)} unreadable)"),
        ("throughput, napari-gradcam loop (augmentation on)", f"{our_ips:.0f} images/s"),
        ("throughput, bare PyTorch loop", f"{bare_ips:.0f} images/s"),
        ("ratio ours / bare", f"{our_ips / bare_ips:.2f}"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    ok = rep["roc_auc"] >= 0.95 and rep["accuracy"] >= 0.90 and train_wall <= 15 * 60
    print(f"\ntarget (AUC >= 0.95, accuracy >= 90 %, training <= 15 min): {'met' if ok else 'NOT met'}; "
          f"throughput within 10 % of bare: {'yes' if our_ips >= 0.9 * bare_ips else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
