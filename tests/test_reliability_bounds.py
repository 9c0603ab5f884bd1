"""Issue 15, family 2: decoding and work are bounded before they start.

Images are refused (or read lazily) by the size their header declares, before a pixel is decoded; the
peak memory of refusing a TIFF that declares 10^10 pixels is measured in a subprocess whose address
space is limited.  Tiled heatmaps estimate their tiles and memory up front: a run that cannot fit is
refused in one sentence, one with far more tiles than the image needs gets a note offering
mode='fullconv'.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from reliability_helpers import cli_error, run_cli, save_png, save_tiny_model, snapshot

import napari_gradcam as ng
from napari_gradcam import resources
from napari_gradcam.data import declared_image, read_image, scan_folder
from napari_gradcam.engine import iter_tiled_heatmaps, tiled_heatmaps
from napari_gradcam.engine.tiling import budget
from napari_gradcam.errors import GradCamWarning, ImageError, ResourceError

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
SRC = Path(ng.__file__).resolve().parents[1]


def huge_tiff(path: Path, side: int = 100_000) -> Path:
    """A 64 x 64 tiled, compressed TIFF whose header says ``side`` x ``side`` pixels (a few hundred bytes)."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as t:
        spots = [(t.pages[0].tags[n].valueoffset, t.pages[0].tags[n].dtype) for n in ("ImageWidth", "ImageLength")]
    with open(path, "r+b") as f:
        for offset, dtype in spots:
            f.seek(offset)
            f.write(struct.pack("<I", side) if dtype == 4 else struct.pack("<H", min(side, 65535)))
    return path


def huge_png(path: Path, side: int = 30_000) -> Path:
    """A 1 x 1 PNG whose IHDR says ``side`` x ``side`` (CRC fixed)."""
    save_png(path, (1, 1))
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------------- decoding
_PROBE = textwrap.dedent("""
    import json, resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from napari_gradcam.data import read_image
    from napari_gradcam.errors import ImageError
    out = {}
    try:
        read_image(sys.argv[1])
        out["ours"] = "read"
    except ImageError as e:
        out["ours"] = str(e)
    # VmHWM (not ru_maxrss, which keeps the peak of the forked parent across exec)
    status = open("/proc/self/status").read()
    out["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
    import tifffile
    try:
        tifffile.imread(sys.argv[1])  # decoding first, as before: the limit must bite
        out["control"] = "read"
    except MemoryError:
        out["control"] = "MemoryError"
    print(json.dumps(out))
""")


def test_refusing_a_huge_declared_tiff_takes_little_memory(tmp_path):
    path = huge_tiff(tmp_path / "bomb.tif")
    assert path.stat().st_size < 2000
    env = dict(os.environ, PYTHONPATH=str(SRC), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    limit = 768 << 20  # address space: decoding 10^10 pixels would need 10 GB
    res = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(limit)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ours"].startswith("bomb.tif declares 100000 x 100000 pixels"), out
    assert "tile" in out["ours"] and "\n" not in out["ours"]
    assert out["peak_rss_mb"] < 200, out
    assert out["control"] == "MemoryError", out  # the limit is real: decoding first would not survive it


def test_header_is_read_before_pixels(tmp_path, monkeypatch):
    """A stack and a huge image are refused from the header: decoding is never called."""
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 64, 64), np.uint16))
    big = huge_tiff(tmp_path / "big.tif")

    def no_decoding(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_decoding)
    with pytest.raises(ImageError, match=r"stack.tif is not a single 2D image \(shape \(5, 64, 64\)\)"):
        read_image(stack)
    with pytest.raises(ImageError, match="declares 100000 x 100000"):
        read_image(big)
    assert declared_image(big).pixels == 10**10


def test_a_huge_declared_png_is_refused(tmp_path):
    path = huge_png(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert "bomb.png" in str(err.value) and "\n" not in str(err.value)


def test_decoding_follows_the_memory_available(tmp_path, monkeypatch):
    path = save_png(tmp_path / "mid.png", (1000, 1000))
    assert read_image(path).shape == (1000, 1000)
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 20)
    with pytest.raises(ImageError, match=r"mid.png declares 1000 x 1000 pixels \(1.0 MB decoded\), more than "
                                         r"this machine can decode now"):
        read_image(path)


def test_a_huge_file_in_a_data_folder_is_skipped_at_the_scan(tmp_path, capsys):
    root = tmp_path / "data"
    for c in ("normal", "pneumonia"):
        for i in range(3):
            save_png(root / c / f"{c}_{i}.png", seed=i)
    huge_tiff(root / "normal" / "bomb.tif")
    data = scan_folder(root)
    assert len(data) == 6
    why = {p.name: r for p, r in data.skipped}
    assert why["bomb.tif"].startswith("bomb.tif declares 100000 x 100000 pixels")
    model = save_tiny_model(tmp_path / "m.safetensors", ["normal", "pneumonia"])
    code, out, err = run_cli(capsys, ["evaluate", model, root, "-q"])
    assert code == 0 and "bomb.tif" in err
    cli_error(capsys, ["predict", model, root / "normal" / "bomb.tif", "-q"], "bomb.tif declares 100000 x 100000")


def test_tile_reads_a_tiff_too_large_to_decode_lazily(tmp_path, capsys, monkeypatch):
    from napari_gradcam import resources as data_module
    from napari_gradcam.phantoms import make_mosaic

    pytest.importorskip("zarr")
    image, _ = make_mosaic((96, 128), tile=32, seed=1)
    src = tmp_path / "mosaic.tif"
    tifffile.imwrite(src, image, tile=(32, 32))
    model = save_tiny_model(tmp_path / "m.safetensors")
    assert run_cli(capsys, ["tile", model, src, "--tile", "32", "--out", tmp_path / "whole", "-q"])[0] == 0
    monkeypatch.setattr(data_module, "DECODE_MEMORY_SHARE", 1e-12)  # nothing may be decoded whole now
    with pytest.raises(ImageError, match="more than this machine can decode"):
        read_image(src)
    code, _, err = run_cli(capsys, ["tile", model, src, "--tile", "32", "--out", tmp_path / "lazy", "-q"])
    assert code == 0, err
    for name in ("heatmap_covid.tif", "heatmap_normal.tif", "heatmap_pneumonia.tif"):
        np.testing.assert_allclose(tifffile.imread(tmp_path / "lazy" / name), tifffile.imread(tmp_path / "whole" / name),
                                   atol=1e-6)


# ----------------------------------------------------------------------------- tiling
def test_tiles_that_cannot_fit_are_refused_up_front(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 2 << 30)
    img = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    with pytest.raises(ResourceError) as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradCamWarning)
            tiled_heatmaps(tiny_bundle, img, tile=16384, batch_size=16)
    msg = str(err.value)
    assert msg.startswith("Tiled heatmaps of a 256 x 256 image (1 tiles of 16384 px) need about ")
    assert "mostly the tiles" in msg and "smaller tiles" in msg and "\n" not in msg
    model = save_tiny_model(tmp_path / "m.safetensors")
    src = save_png(tmp_path / "in.png", (256, 256))
    before = snapshot(tmp_path)
    cli_error(capsys, ["tile", model, src, "--tile", "16384", "--out", tmp_path / "out", "-q"], "need about", "GB")
    assert snapshot(tmp_path) == before  # not even the output folder


def test_per_tile_maps_that_cannot_fit_are_refused(tiny_bundle, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 64 << 20)
    img = np.zeros((1024, 1024), np.float32)
    with pytest.raises(ResourceError, match="1,034,289 tiles of 8 px.*mostly the per-tile maps.*fewer tiles"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradCamWarning)
            next(iter_tiled_heatmaps(tiny_bundle, img, tile=8, overlap=0.95))


def test_far_too_many_tiles_are_announced_before_the_first_runs(tiny_bundle):
    img = np.zeros((1024, 1024), np.float32)
    gen = iter_tiled_heatmaps(tiny_bundle, img, tile=8, overlap=0.95, force=True)  # beyond any time budget
    with pytest.warns(GradCamWarning, match=r"1,034,289 tiles of 8 px \(stride 1 px\).*mode='fullconv'"):
        assert next(gen) == (0, 1_034_289)  # planned, not one tile run
    gen.close()


def test_the_cli_prints_the_note_and_still_runs(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "m.safetensors")
    src = save_png(tmp_path / "in.png", (64, 64))
    code, _, err = run_cli(capsys, ["tile", model, src, "--tile", "8", "--overlap", "0.75", "--out", tmp_path / "o", "-q"])
    assert code == 0
    notes = [line for line in err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("napari-gradcam: note: 841 tiles of 8 px"), err
    assert "fullconv" in notes[0]


def test_default_tiling_gives_no_note(tiny_bundle):
    img = np.zeros((300, 200), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradCamWarning)
        tiled_heatmaps(tiny_bundle, img, tile=32)


def test_the_fully_convolutional_mode_is_bounded_too(tiny_bundle, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 8 << 20)
    img = np.zeros((2000, 2000), np.float32)
    with pytest.raises(ResourceError, match="fully convolutional mode.*use mode 'tiles'"):
        tiled_heatmaps(tiny_bundle, img, tile=32, mode="fullconv")


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    import napari_gradcam as ng
    from napari_gradcam.engine import tiled_heatmaps
    from napari_gradcam.engine.tiling.budget import tiling_cost
    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", ["a", "b", "c"], in_channels=1, input_size=32)
    img = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    tiled_heatmaps(b, img[:40, :40], tile=32)  # warm up: the libraries' own buffers are not the run's
    tile = int(sys.argv[1])
    stride = max(1, round(tile * 0.5))
    from napari_gradcam.engine.tiling import blend_factor
    cost = tiling_cost(b, img.shape, 4, tile, stride, 4, 3, f=blend_factor(tile, stride))
    def kb(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
    before = kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak, to the RSS now
        f.write("5")
    tiled_heatmaps(b, img, tile=tile, batch_size=4)
    print(json.dumps({"estimate": cost.peak_bytes, "grew": kb("VmHWM") - before, "reset": kb("VmHWM") < before + (1 << 30)}))
""")


@pytest.mark.parametrize("tile", [1536, 64, 16])
def test_the_estimate_bounds_the_measured_peak(tile):
    """Padded giant tiles (dominated by the tiles) and many small ones (by the per-tile maps)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak memory of a process cannot be reset here (Linux /proc/self/clear_refs)")
    env = dict(os.environ, PYTHONPATH=str(SRC), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", _MEASURE, str(tile)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["grew"] <= out["estimate"], out
