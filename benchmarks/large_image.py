"""Tiled heatmaps of very large images, lazily: throughput and peak memory.

For each size (default 4096, 10240 and 20480 px square) a zarr image is written chunk by
chunk (a synthetic X-ray mosaic), then tiled CAM heatmaps of every class are computed with
dask, chunk by chunk, and written to a zarr store together with the class breakdown, in one
pass, without ever holding the image or the maps in memory:

* ``threads``: dask's local threaded scheduler;
* ``cluster``: a ``dask.distributed`` LocalCluster (2 worker processes x 1 thread), the
  path to many machines (point a Client at a real cluster instead).

Each run is a fresh subprocess, so its peak resident memory (``ru_maxrss``; for the cluster,
the largest worker plus the client) is its own.  The per-tile loop (one tile per forward
pass, numpy, the seed approach) is measured on a 2048 x 2048 crop for the ratio.

Model: the demo model (simple_cnn, 128 px input), 512 px tiles (one radiograph each) at 50%
overlap.  Run: ``python benchmarks/large_image.py [--sizes 4096 10240 20480] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TILE, OVERLAP, CHUNK, BATCH = 512, 0.5, 2048, 32


def _bundle():
    import napari_gradcam as ng
    from napari_gradcam.data import demo_model_path

    path = demo_model_path()
    if path.exists():
        return ng.load_model(path, device="cpu")
    return ng.build_model("simple_cnn", ["normal", "pneumonia", "covid"], 1, 128)  # same speed, random weights


def write_image(path: Path, size: int) -> None:
    """A size x size uint8 zarr image, written block by block from one 2048 px mosaic."""
    import zarr

    from napari_gradcam.phantoms import make_mosaic

    block, _ = make_mosaic((CHUNK, CHUNK), tile=512, seed=0)
    z = zarr.open(str(path), mode="w", shape=(size, size), chunks=(CHUNK, CHUNK), dtype="uint8")
    for y in range(0, size, CHUNK):
        for x in range(0, size, CHUNK):
            h, w = min(CHUNK, size - y), min(CHUNK, size - x)
            z[y : y + h, x : x + w] = block[:h, :w]


def child(image: str, scheduler: str, out: str) -> dict:
    """One measured run (in its own process)."""
    import dask
    import dask.array as da

    from napari_gradcam.engine import tiled_heatmaps

    bundle = _bundle()
    arr = da.from_zarr(image)
    t0 = time.perf_counter()
    result = tiled_heatmaps(bundle, arr, tile=TILE, overlap=OVERLAP, batch_size=BATCH, chunk=CHUNK,
                            value_range_=(0, 255))
    workers_rss = 0
    if scheduler == "cluster":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            t0 = time.perf_counter()  # exclude cluster start-up
            stored = result.to_zarr(out)
            seconds = time.perf_counter() - t0
            rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            workers_rss = max(rss.values())
    else:
        with dask.config.set(scheduler="threads", num_workers=2):
            stored = result.to_zarr(out)
        seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = arr.shape[0] * arr.shape[1]
    return {"seconds": seconds, "mpx_s": size / 1e6 / seconds, "tiles": result.tiles,
            "peak_mb": max(own, workers_rss) / 1024, "breakdown": stored.breakdown}


def per_tile_loop(size: int = 2048) -> float:
    """Megapixels/s of the per-tile loop (batch of one) on a numpy crop."""
    from napari_gradcam.engine import tiled_heatmaps
    from napari_gradcam.phantoms import make_mosaic

    bundle = _bundle()
    image, _ = make_mosaic((size, size), tile=512, seed=0)
    t0 = time.perf_counter()
    tiled_heatmaps(bundle, image, tile=TILE, overlap=OVERLAP, batch_size=1)
    return size * size / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 10240, 20480])
    parser.add_argument("--schedulers", nargs="+", default=["threads", "cluster"])
    parser.add_argument("--quick", action="store_true", help="sizes 2048 and 4096 only")
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "SCHEDULER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sizes = [2048, 4096] if args.quick else args.sizes
    print(f"tiles {TILE} px, overlap {OVERLAP}, output chunks {CHUNK} px, batch {BATCH}, {os.cpu_count()} CPU cores\n")
    loop = per_tile_loop()
    print("| image | scheduler | tiles | seconds | megapixels/s | vs per-tile loop | peak memory MB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            image = Path(tmp) / f"image_{size}.zarr"
            write_image(image, size)
            for scheduler in args.schedulers:
                out = Path(tmp) / f"heat_{size}_{scheduler}.zarr"
                proc = subprocess.run([sys.executable, __file__, "--child", str(image), scheduler, str(out)],
                                      capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"| {size}x{size} | {scheduler} | {r['tiles']} | {r['seconds']:.1f} | {r['mpx_s']:.2f} | "
                      f"{r['mpx_s'] / loop:.2f}x | {r['peak_mb']:.0f} |", flush=True)
    print(f"\nper-tile loop (numpy, one tile per forward pass, 2048x2048): {loop:.2f} megapixels/s")


if __name__ == "__main__":
    main()
