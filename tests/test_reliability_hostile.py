"""Issue 20's hostile leftovers: plans of hours refused up front (``--force`` / ``force=True``), every number
option bounded, MemoryError as one sentence, progress bars cleared before a message, patterns that cannot
hang.  Each test fails on the code before the fix."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from reliability_helpers import cli_error, run_cli, save_png, save_tiny_model, snapshot

from napari_gradcam.errors import GradCamError, ResourceError, TimeBudgetError

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    model = save_tiny_model(root / "m.safetensors")
    image = save_png(root / "scan.png")
    big = save_png(root / "big.png", shape=(1024, 1024))
    data = root / "data"
    for c in ("normal", "pneumonia", "covid"):
        for i in range(3):
            save_png(data / c / f"{c}{i}.png", seed=i)
    return root, model, image, big, data


# ----------------------------------------------------------------------------- time budget of tiling
def test_a_plan_of_hours_is_refused_before_any_tile(tiny_bundle, monkeypatch):
    """The issue's case: tiles of 8 px at 0.95 overlap on a 1,024 px image, 1,034,289 tiles; with a tile
    measured at 38 ms that is 10.9 hours, far beyond the default 10 minutes."""
    import napari_gradcam.engine.tiling.budget as budget
    from napari_gradcam import tiled_heatmaps

    assert budget.TIME_BUDGET_MINUTES == 10
    monkeypatch.setattr(budget, "seconds_per_tile", lambda *a, **k: 0.038)
    image = np.zeros((1024, 1024), np.float32)
    with pytest.raises(TimeBudgetError) as e:
        tiled_heatmaps(tiny_bundle, image, tile=8, overlap=0.95)
    err = e.value
    assert isinstance(err, ResourceError) and isinstance(err, GradCamError)
    assert err.tiles == 1_034_289 and err.budget_seconds == 600 and err.seconds == pytest.approx(1_034_289 * 0.038)
    assert str(err) == ("Tiled heatmaps of a 1024 x 1024 image (1,034,289 tiles of 8 px) would take about 10.9 h "
                        "(measured on one tile), beyond the budget of 10 min; use larger tiles or less overlap, or "
                        "pass force=True (or a larger max_minutes) to run it anyway.")
    assert err.summary in str(err) and "force" not in err.summary


def test_the_estimate_comes_from_a_real_measured_tile(tiny_bundle):
    """Without any stand-in: a budget of 0.6 s for a million tiles is exceeded by any measured tile."""
    from napari_gradcam.engine import iter_tiled_heatmaps

    gen = iter_tiled_heatmaps(tiny_bundle, np.zeros((1024, 1024), np.uint8), tile=8, overlap=0.95, max_minutes=0.01)
    with pytest.raises(TimeBudgetError, match=r"1,034,289 tiles of 8 px\) would take about .* budget of 1 s"):
        next(gen)


def test_force_runs_the_plan_and_small_plans_are_never_timed(tiny_bundle, monkeypatch):
    import napari_gradcam.engine.tiling.budget as budget
    from napari_gradcam import tiled_heatmaps

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)  # 15 x 15 = 225 tiles of 8 px
    with pytest.raises(TimeBudgetError):
        tiled_heatmaps(tiny_bundle, image, tile=8, overlap=0.5, max_minutes=1e-9)
    forced = tiled_heatmaps(tiny_bundle, image, tile=8, overlap=0.5, max_minutes=1e-9, force=True)
    unlimited = tiled_heatmaps(tiny_bundle, image, tile=8, overlap=0.5, max_minutes=0)
    assert forced.tiles == 225 and np.array_equal(forced.heatmaps, unlimited.heatmaps)

    def never(*a, **k):
        raise AssertionError("a small plan was timed")

    monkeypatch.setattr(budget, "seconds_per_tile", never)
    assert tiled_heatmaps(tiny_bundle, image[:16, :16], tile=8, overlap=0.5).tiles == 9
    with pytest.raises(GradCamError, match="force must be True or False"):
        tiled_heatmaps(tiny_bundle, image, tile=8, force="yes")


def test_tile_refuses_a_plan_of_hours_naming_force(files, capsys, monkeypatch):
    import napari_gradcam.engine.tiling.budget as budget

    root, model, _, big, _ = files
    monkeypatch.setattr(budget, "seconds_per_tile", lambda *a, **k: 0.038)
    before = snapshot(root)
    line = cli_error(capsys, ["tile", model, big, "--tile", "8", "--overlap", "0.95", "--out", root / "t", "-q"],
                     "1,034,289 tiles of 8 px", "about 10.9 h", "add --force")
    assert "force=True" not in line
    assert snapshot(root) == before
    code, out, err = run_cli(capsys, ["tile", model, big, "--tile", "512", "--out", root / "t", "-q", "--force",
                                      "--max-minutes", "0.0001"])
    assert code == 0, err
    assert (root / "t" / "breakdown.json").is_file()


# ----------------------------------------------------------------------------- number options
@pytest.mark.parametrize("args, words", [
    (["compare", "{model}", "{image}", "--steps", "1000000000"], ["--steps", "between 1 and 1,000"]),
    (["info", "{model}", "--input-size", "0"], ["--input-size", "between 16 and 4,096, not 0"]),
    (["convert", "{model}", "--out", "{root}/c.safetensors", "--input-size", "100000"], ["--input-size"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t2", "--overlap", "0.99"],
     ["--overlap", "Overlap must be between 0 and 0.95, not 0.99"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t2", "--tile", "100000"], ["--tile", "between 1 and 16,384"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t2", "--batch-size", "10000000"], ["--batch-size", "4,096"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t2", "--max-minutes", "-1"], ["--max-minutes", "0 or more"]),
    (["predict", "{model}", "{image}", "--batch-size", "1000000000"], ["--batch-size", "between 1 and 4,096"]),
    (["evaluate", "{model}", "{data}", "--batch-size", "99999"], ["--batch-size"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--shifts", "100"], ["--shifts", "at most 8"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--std", "0"], ["--std", "greater than 0"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--mean", "nan"], ["--mean", "finite"]),
    (["localize", "{model}", "{data}", "{data}", "--tolerance", "1e300"], ["--tolerance", "between 0 and"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--epochs", "1000000000"], ["--epochs", "at most 100,000"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--batch-size", "1000000"],
     ["--batch-size", "at most 4,096"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--image-size", "100000"], ["--image-size", "at most"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--rotation", "1e9"], ["--rotation", "at most 180"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--workers", "100000"], ["--workers", "at most 256"]),
])
def test_number_options_are_bounded_up_front(args, words, files, capsys):
    root, model, image, _, data = files
    argv = [a.format(root=root, model=model, image=image, data=data) for a in args]
    before = snapshot(root)
    cli_error(capsys, argv, *words)
    assert snapshot(root) == before


def test_no_number_option_is_unbounded():
    """Every option that parses a number goes through a bounded type (or has a list of choices): a new
    ``type=int`` / ``type=float`` option would let 10**9 through."""
    import argparse

    from napari_gradcam.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.type in (int, float) and not action.choices:
                raise AssertionError(f"{name} {'/'.join(action.option_strings)} takes an unbounded number")
            seen += action.type is not None
    assert seen > 30


def test_every_number_option_has_a_maximum():
    """A bounded type needs an upper bound too (``int_type(2)`` lets 10**15 through): every option whose
    type parses a small number ("1", "16", ...) refuses 10**15 with a usage error."""
    import argparse

    from napari_gradcam.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    numbers, open_ended = 0, []
    for name, p in sub.choices.items():
        for action in p._actions:
            if not callable(action.type) or action.choices:
                continue
            for small in ("1", "0", "0.5", "16", "-1"):
                try:
                    one = action.type(small)
                    break
                except (argparse.ArgumentTypeError, ValueError, TypeError):
                    one = None
            if isinstance(one, (int, float)) and not isinstance(one, bool):
                numbers += 1
                try:
                    action.type(str(10**15))
                    open_ended.append(f"{name} {'/'.join(action.option_strings)}")
                except argparse.ArgumentTypeError:
                    pass
    assert numbers > 30 and not open_ended, open_ended


# ----------------------------------------------------------------------------- MemoryError and progress bars
def test_memory_error_anywhere_is_the_resource_sentence(files, capsys, monkeypatch):
    import napari_gradcam.inference as inference

    root, model, image, _, _ = files

    def exhausted(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(inference, "predict", exhausted)
    line = cli_error(capsys, ["predict", model, image, "-q"], "'predict' ran out of memory", "available now")
    assert line.startswith("napari-gradcam: error: ")


def test_an_error_mid_run_clears_the_progress_bar_first(files, capsys, monkeypatch):
    """The bar is closed (cleared) before the message, so the sentence starts its own line, not the
    bar's; what follows the last carriage return is the message alone."""
    import napari_gradcam.inference as inference

    root, model, image, _, data = files

    def failing(*a, **k):
        raise GradCamError("The model failed on this batch.")

    monkeypatch.setattr(inference, "predict", failing)
    code, _, err = run_cli(capsys, ["predict", model, data])
    assert code == 2
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last == "napari-gradcam: error: The model failed on this batch.", repr(err)


# ----------------------------------------------------------------------------- patterns that cannot hang
CATASTROPHIC = "(a+)+$"


def test_a_catastrophic_pattern_matches_in_linear_time(tmp_path):
    """'(a+)+$' on a name of 5,000 a's and a '!' takes 2**5000 steps with a backtracking matcher; the data
    folder scan runs in a subprocess that would be killed (and the test fail) if it hung."""
    root = tmp_path / "data"
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            save_png(root / c / ("a" * 200 + f"!{c}{i}.png"), shape=(8, 8), seed=i)
    code = ("import sys; from napari_gradcam.data import scan_folder, group_of, compile_pattern; "
            f"d = scan_folder(sys.argv[1], group_pattern={CATASTROPHIC!r}); print(len(d), len(set(d.groups))); "
            f"from pathlib import Path; print(group_of(Path('a' * 5000 + '!'), {CATASTROPHIC!r}))")
    res = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[:2] == ["6", "6"]  # no match: each file is its own group
    assert lines[2] == "a" * 5000 + "!"


def test_patterns_keep_their_meaning_and_bad_ones_are_one_sentence(capsys, files):
    from pathlib import Path

    from napari_gradcam.data import PATIENT_PATTERN, compile_pattern, group_of
    from napari_gradcam.errors import DatasetError

    assert group_of(Path("person12_bacteria_3.jpeg"), PATIENT_PATTERN) == "person12"
    assert group_of(Path("NORMAL2-IM-0115-0001.jpeg"), PATIENT_PATTERN) == "NORMAL2-IM-0115"
    assert group_of(Path("p7_scan.png"), r"p(\d+)_") == "7"
    assert compile_pattern("(a+)+$").search("aaa").group(1) == "aaa"
    for bad, words in [("(a", "not a regular expression"), (r"(a)\1", "backreferences")]:
        with pytest.raises(DatasetError, match=words):
            compile_pattern(bad)
    root, _, _, _, data = files
    capsys.readouterr()
    cli_error(capsys, ["train", data, "--out", root / "p.safetensors", "--group-pattern", r"(a)\1", "-q"],
              "grouping pattern", "RE2")  # one line: RE2's own log stays silent


# ----------------------------------------------------------------------------- smaller leftovers
def test_model_files_follow_the_umask_and_an_overwrite_keeps_the_mode(tmp_path, tiny_bundle):
    import os
    import stat

    import napari_gradcam as ng

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    old = os.umask(0o027)
    try:
        path = ng.save_model(tiny_bundle, tmp_path / "m.safetensors")
        assert mode(path) == 0o640  # 0644 less the umask (safetensors alone writes 0600)
        os.chmod(path, 0o664)
        ng.save_model(tiny_bundle, path)
        assert mode(path) == 0o664  # the overwritten file's own mode
    finally:
        os.umask(old)


def test_an_output_below_a_file_names_the_file(tmp_path, files, capsys, tiny_bundle):
    import napari_gradcam as ng
    from napari_gradcam.errors import OutputError

    _, model, _, _, _ = files
    (tmp_path / "f").write_text("x")
    cli_error(capsys, ["convert", model, "--out", tmp_path / "f" / "x.safetensors"], "f is a file")
    with pytest.raises(OutputError, match=r"Cannot write .*x.safetensors: .*f is a file, not a folder"):
        ng.save_model(tiny_bundle, tmp_path / "f" / "y" / "x.safetensors")


def _asymmetric(shape=(20, 30), channels=False):
    """A gradient with one bright corner: every flip and rotation gives another array."""
    a = np.add.outer(np.arange(shape[0]) * 3, np.arange(shape[1])).astype(np.uint8)
    a[:3, :4] = 255
    return np.stack([a, a // 2, 255 - a], -1) if channels else a


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_and_tiff_orientation_give_the_upright_image(orientation, tmp_path):
    """PNG and JPEG with an EXIF Orientation read as Pillow's exif_transpose shows them; a TIFF with the
    same Orientation tag reads the same as the PNG."""
    import tifffile
    from PIL import Image, ImageOps

    from napari_gradcam.data import read_image

    arr = _asymmetric()
    exif = Image.Exif()
    exif[274] = orientation
    for suffix in ("png", "jpg"):
        path = tmp_path / f"x.{suffix}"
        Image.fromarray(arr).save(path, exif=exif)
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(read_image(path), expected)
        if suffix == "png":
            upright = expected
    assert (upright.shape == arr.shape) == (orientation < 5)
    tif = tmp_path / "x.tif"
    tifffile.imwrite(tif, arr, extratags=[(274, "H", 1, orientation, True)])
    np.testing.assert_array_equal(read_image(tif), upright)
    rgb = _asymmetric(channels=True)
    tifffile.imwrite(tif, rgb, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    Image.fromarray(rgb).save(tmp_path / "rgb.png", exif=exif)
    np.testing.assert_array_equal(read_image(tif), read_image(tmp_path / "rgb.png"))


def test_pillow_bomb_warning_is_never_printed(tmp_path, files, capsys, monkeypatch):
    """Between Pillow's limit and twice it, Pillow only warns (on stderr, raw); our own bounded check
    decides instead.  Beyond twice it: one sentence."""
    import warnings

    from PIL import Image

    from napari_gradcam.data import read_image
    from napari_gradcam.errors import ImageError

    _, model, _, _, _ = files
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    fits, bomb = save_png(tmp_path / "fits.png", (40, 40)), save_png(tmp_path / "bomb.png", (50, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(fits).shape == (40, 40)
        with pytest.raises(ImageError, match="bomb.png could not be read as an image"):
            read_image(bomb)
    code, out, err = run_cli(capsys, ["predict", model, fits, "-q"])
    assert code == 0 and "Warning" not in err, err


def test_torch_placeholders_never_reach_a_message(tmp_path):
    """A legacy .pt whose storage size field disagrees with its data: torch says "expected %ld got %ld"."""
    import struct

    import torch

    import napari_gradcam as ng
    from napari_gradcam.errors import ModelFileError

    path = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(100)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    at = len(data) - 400 - 8  # the int64 element count just before the 400 bytes of data
    assert struct.unpack("<q", bytes(data[at:at + 8])) == (100,)
    data[at:at + 8] = struct.pack("<q", 90)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as e:
        ng.load_model(path, architecture="simple_cnn", classes=["a", "b"])
    assert "%" not in str(e.value)
    assert str(e.value) == ("old.pt is not a readable PyTorch weights file (storage has wrong byte size; the file "
                            "is damaged).")


# ----------------------------------------------------------------------------- lazy stores
@pytest.fixture(scope="module")
def vast_store(tmp_path_factory):
    """A zarr store declaring 10^6 x 10^6 pixels (no chunk written: a few bytes on disk)."""
    zarr = pytest.importorskip("zarr")
    path = tmp_path_factory.mktemp("vast") / "vast.zarr"
    z = zarr.open(str(path), mode="w", shape=(1_000_000, 1_000_000), chunks=(4096, 4096), dtype="uint8")
    z[:4096, :4096] = 7  # one chunk with data
    return path


def test_a_vast_lazy_store_is_costed_before_its_value_range_is_read(vast_store, tiny_bundle, files, capsys):
    """The value-range pass over 10^12 pixels would run for a long time in silence: its estimate (one
    block read, times the blocks) is refused in one sentence instead; a lazy result's tiles are computed
    on demand (a viewer shows a corner), so in Python only the pass counts, while ``tile``, which computes
    them all, costs the tiles too."""
    import dask.array as da

    from napari_gradcam.engine import iter_tiled_heatmaps

    image = da.from_zarr(str(vast_store))  # 59,536 blocks: reading them takes more than 0.6 s on any machine
    with pytest.raises(TimeBudgetError, match=r"1000000 x 1000000 image \(976,562,500 tiles of 32 px, computed on "
                                              r"demand\) would take about .* \(measured on one block, .* reading "
                                              r"the image's value range\), beyond the budget of 1 s"):
        next(iter_tiled_heatmaps(tiny_bundle, image, tile=32, overlap=0, classes="all", max_minutes=0.01))
    root, model, _, _, _ = files
    line = cli_error(capsys, ["tile", model, vast_store, "--tile", "32", "--overlap", "0", "--out", root / "vast",
                              "-q"], "1000000 x 1000000 image (976,562,500 tiles of 32 px)", "add --force")
    assert "measured on one tile" in line  # the command line computes every tile: all of them are costed


def test_a_forced_long_scan_is_announced_with_its_estimate(vast_store, tiny_bundle):
    """Forced, the pass still does not start in silence: a note gives its estimate first (raised here as an
    error so that the pass does not run), and ``value_range_`` skips it."""
    import warnings

    import dask.array as da

    from napari_gradcam.engine import iter_tiled_heatmaps
    from napari_gradcam.errors import GradCamWarning

    image = da.from_zarr(str(vast_store))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradCamWarning)
        with pytest.raises(GradCamWarning, match=r"Reading the value range of the 1000000 x 1000000 image first "
                                                 r"takes about .*give value_range_ to skip it"):
            next(iter_tiled_heatmaps(tiny_bundle, image, tile=32, overlap=0, force=True))
        t = next(iter_tiled_heatmaps(tiny_bundle, image[:64, :64], tile=32, overlap=0, value_range_=(0, 255),
                                     force=True), None)
    assert t == (0, 4)  # no note: the range was given, so no pass over the image runs


def _declaring_tiff(path, size):
    """A 16 x 16 TIFF whose header is rewritten to declare ``size`` x ``size`` pixels (a few hundred bytes)."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages[0].tags["ImageWidth"].overwrite(size)
        tf.pages[0].tags["ImageLength"].overwrite(size)
    return path


def test_hostile_files_on_the_command_line_are_one_sentence(files, tmp_path, capsys):
    """Inputs of our own: an empty file, a truncated PNG, a folder where a file is expected, a TIFF that
    declares 200,000 x 200,000 pixels (read whole, and lazily by tile), text named .png."""
    root, model, image, _, _ = files
    (tmp_path / "empty.png").write_bytes(b"")
    png = image.read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.png").write_text("hello")
    huge = _declaring_tiff(tmp_path / "huge.tif", 200_000)
    before = snapshot(tmp_path)
    out = tmp_path / "o"
    for name, words in [("empty.png", "empty.png"), ("cut.png", "truncated"), ("folder.png", "No image file"),
                        ("text.png", "text.png"), ("huge.tif", "declares 200000 x 200000 pixels")]:
        cli_error(capsys, ["explain", model, tmp_path / name, "--out", out / "h.tif"],
                  "No images were found" if name == "folder.png" else words)  # a folder: one map per image
        cli_error(capsys, ["predict", model, tmp_path / name, "-q"], name)
    cli_error(capsys, ["tile", model, huge, "--out", out, "-q"], "A block of huge.tif", "could not be read")
    cli_error(capsys, ["explain", tmp_path / "folder.png", image, "--out", out / "h.tif"], "folder")
    cli_error(capsys, ["info", tmp_path / "empty.png"], "empty")
    assert snapshot(tmp_path) == before


def test_without_re2_nested_quantifiers_are_refused(monkeypatch):
    """Where google-re2 is missing, Python's re runs the pattern, and the shapes that backtrack
    exponentially are refused in one sentence; the default Kermany pattern still works."""
    from pathlib import Path

    from napari_gradcam.data import PATIENT_PATTERN, compile_pattern, group_of
    from napari_gradcam.errors import DatasetError

    monkeypatch.setitem(sys.modules, "re2", None)  # import re2 -> ImportError
    for bad in (CATASTROPHIC, "(a|aa)*", "(x*y?){2,}"):
        with pytest.raises(DatasetError, match="repeats a group that itself repeats"):
            compile_pattern(bad)
    assert type(compile_pattern(PATIENT_PATTERN)).__module__ == "re"
    assert group_of(Path("person3_virus_9.jpeg"), PATIENT_PATTERN) == "person3"


def test_an_input_size_of_0_is_refused_not_read_as_the_default(tmp_path):
    import torch

    import napari_gradcam as ng
    from napari_gradcam.errors import ModelFileError

    path = tmp_path / "w.pt"
    torch.save(ng.build_model("simple_cnn", ["a", "b"], 1, 64).model.state_dict(), path)
    with pytest.raises(ModelFileError, match="input_size must be between 16 and 4096 pixels, not 0"):
        ng.load_model(path, architecture="simple_cnn", classes=["a", "b"], input_size=0)
    assert ng.load_model(path, architecture="simple_cnn", classes=["a", "b"]).input_size == 224


def test_a_lazy_image_in_one_giant_block_is_refused_before_reading_it(tiny_bundle, monkeypatch):
    """Each pass reads a block whole: a 20,000 x 20,000 image stored as one block (400 MB) on a machine
    with 100 MB available (50 MB for a block) is one sentence, not a 400 MB read."""
    import dask.array as da

    import napari_gradcam.resources as resources
    from napari_gradcam import tiled_heatmaps

    monkeypatch.setattr(resources, "available_memory", lambda: 100_000_000)
    image = da.zeros((20_000, 20_000), dtype=np.uint8, chunks=20_000)
    with pytest.raises(ResourceError, match=r"blocks of 20000 x 20000 values \(400.0 MB each, read whole\), more "
                                            r"than can be read now \(50.0 MB\); store it with smaller chunks"):
        tiled_heatmaps(tiny_bundle, image, tile=512)
