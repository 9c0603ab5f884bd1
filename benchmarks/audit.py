"""The audit's costs, side by side in one run.

1. The explanation pass (reading the files included) against batched prediction of the same files and
   against a loop of ``ng.explain`` per image (goal: <= 1.25x batched prediction).
2. The same pass on a two-worker dask LocalCluster against one process.
3. Peak memory of a whole audit (pass, table, clustering) at 1,000 and at 10,000 images (goal: flat), each
   in a fresh process, images generated on demand so that only the audit holds data.
4. Clustering 20,000 synthetic maps (three strategies) (goal: <= 60 s; sparse affinities).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/audit.py [--arch resnet18] [--size 224] [--n 128] [--skip-workers]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` phantom chest films (PNG, ``size`` px) in two class folders."""
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(folder, n_per_class=n // 2, size=size, seed=0)


def time_pass(bundle, folder: Path, batch: int, workers: int | None = None) -> float:
    from napari_gradcam.audit import iter_audit

    t = time.perf_counter()
    gen = iter_audit(bundle, folder, batch_size=batch, confirm=False, workers=workers)
    for ev in gen:
        if ev.kind == "explain" and ev.done == ev.total:
            if workers is None:
                break
            elapsed = time.perf_counter() - t
            gen.close()
            return elapsed
    elapsed = time.perf_counter() - t
    gen.close()
    return elapsed


def time_predict(bundle, folder: Path, batch: int) -> float:
    import napari_gradcam as ng
    from napari_gradcam.data import read_image

    files = sorted(folder.rglob("*.png"))
    t = time.perf_counter()
    for i in range(0, len(files), batch):
        ng.predict(bundle, [read_image(p) for p in files[i:i + batch]], batch_size=batch)
    return time.perf_counter() - t


def time_explain_loop(bundle, folder: Path) -> float:
    import napari_gradcam as ng
    from napari_gradcam.data import read_image

    t = time.perf_counter()
    for p in sorted(folder.rglob("*.png")):
        ng.explain(bundle, read_image(p), method="gradcam")
    return time.perf_counter() - t


class Generated:
    """``n`` (64, 64) uint8 images made on demand (nothing held in memory)."""

    shape = None

    def __init__(self, n: int) -> None:
        self.n = n
        self.shape = (n, 64, 64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(int(i))
        img = rng.integers(0, 200, (64, 64), dtype=np.uint8)
        if i % 3 == 0:
            img[2:12, 2:12] = 255
        return img


def peak_memory_child(n: int) -> None:
    """(In a fresh process) a whole audit of ``n`` generated images; prints the peak RSS in MiB."""
    import resource

    import torch

    import napari_gradcam as ng
    from napari_gradcam.audit import audit

    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", classes=["a", "b"], in_channels=1, input_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        audit(b, Generated(n), batch_size=64, confirm=False, out=Path(tmp) / "a")
    print(json.dumps({"n": n, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(n: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def time_clustering(n: int = 20000) -> tuple[float, int]:
    from napari_gradcam.audit.shares import normalise_sum
    from napari_gradcam.audit.spray import find_strategies

    rng = np.random.default_rng(0)
    g = 32
    yy, xx = np.mgrid[0:g, 0:g] / g
    centres = np.array([(0.5, 0.5), (0.5, 0.15), (0.08, 0.08)])
    which = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    maps = np.empty((n, g, g), np.float32)
    for i in range(n):
        cy, cx = centres[which[i]] + rng.normal(0, 0.04, 2)
        maps[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01) + 0.05 * rng.random((g, g))
    maps = normalise_sum(maps)
    t = time.perf_counter()
    s = find_strategies(maps, max_clusters=8)
    return time.perf_counter() - t, s.n_clusters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=128, help="images for the speed comparison")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return
    import torch

    import napari_gradcam as ng

    torch.manual_seed(0)
    b = ng.build_model(args.arch, classes=["covid", "normal", "pneumonia"], in_channels=1, input_size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_images(Path(tmp) / "data", args.n, args.size)
        time_pass(b, folder, args.batch)  # warm-up
        pred = time_predict(b, folder, args.batch)
        audit_pass = time_pass(b, folder, args.batch)
        loop = time_explain_loop(b, folder)
        print(f"{args.arch} at {args.size} px, {args.n} images, batch {args.batch}, torch threads "
              f"{torch.get_num_threads()}:")
        print(f"  batched prediction         {pred:7.2f} s  1.00x")
        print(f"  audit explanation pass     {audit_pass:7.2f} s  {audit_pass / pred:.2f}x  (goal <= 1.25x)")
        print(f"  loop of ng.explain         {loop:7.2f} s  {loop / pred:.2f}x")
        if not args.skip_workers:
            two = time_pass(b, folder, args.batch, workers=2)
            print(f"  pass on 2 dask workers     {two:7.2f} s  {two / audit_pass:.2f}x of one process "
                  "(start-up of the cluster included)")
    if not args.skip_memory:
        small, large = peak_memory(1000), peak_memory(10000)
        print(f"peak memory of a whole audit: 1,000 images {small:.0f} MiB, 10,000 images {large:.0f} MiB "
              f"({large / small:.2f}x)")
    secs, k = time_clustering()
    print(f"clustering 20,000 maps: {secs:.1f} s ({k} clusters found, 3 planted; goal <= 60 s)")


if __name__ == "__main__":
    main()
