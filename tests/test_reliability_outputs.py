"""Issue 15, family 1: outputs are checked before the work and written atomically; a failed run leaves
what was there.

Every case asserts the exit code, the one sentence on stderr, and the files afterwards: previous
outputs byte-for-byte unchanged, inputs untouched, no temporary file left behind.  A full disk is a
1 MB tmpfs mounted in the test (root only), a read-only folder a read-only tmpfs (or permission bits).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from reliability_helpers import (
    cli_error, fill, full_disk, read_only_folder, run_cli, save_png, save_tiny_model, snapshot, temp_files,
)

import napari_gradcam as ng
from napari_gradcam.errors import OutputError
from napari_gradcam.outputs import atomic_write, atomic_write_many, check_outputs, safe_file_names

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = save_tiny_model(root / "m.safetensors")
    image = save_png(root / "scan.png")
    data = root / "data"
    for c in ("normal", "pneumonia", "covid"):
        for i in range(2):
            save_png(data / c / f"{c}_{i}.png", seed=i + 10 * len(c))
    return model, image, data


# ----------------------------------------------------------------------------- checked before the work
def test_outputs_are_checked_before_the_model_is_read(tmp_path, capsys, files):
    """A bad output is refused first: the model path given does not even exist."""
    _, image, data = files
    missing = tmp_path / "no_model.safetensors"
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "pipe.json")
    before = snapshot(tmp_path)
    cases = [
        (["explain", missing, image, "--out", tmp_path / "heat.png"], ["--out", "heat.png", ".tif or .tiff"]),
        (["explain", missing, image, "--out", tmp_path / "folder.tif"], ["folder.tif", "is a folder"]),
        (["explain", missing, image, "--out", tmp_path / "h.tif", "--overlay", tmp_path / "h.xyz"],
         ["--overlay", ".xyz"]),
        (["explain", missing, image, "--out", tmp_path / "h.tif", "--overlay", tmp_path / "h.tif"],
         ["--out and --overlay name the same file"]),
        (["explain", missing, image, "--out", tmp_path / "afile" / "h.tif"], ["cannot be made", "afile is a file"]),
        (["tile", missing, image, "--out", tmp_path / "afile"], ["afile", "not a folder"]),
        (["evaluate", missing, data, "--json", tmp_path / "pipe.json"], ["pipe.json", "not a regular file"]),
        (["evaluate", missing, data, "--plot", tmp_path / "r.gif"], ["--plot", ".gif"]),
        (["predict", missing, image, "--csv", tmp_path / "p.txt"], ["--csv", ".csv"]),
        (["localize", missing, data, data, "--json", tmp_path / "folder.tif"], ["--json", ".json"]),
        (["train", data, "--out", tmp_path / "m.pt"], ["--out", ".safetensors"]),
    ]
    for argv, words in cases:
        cli_error(capsys, argv, *words)
    assert snapshot(tmp_path) == before and temp_files(tmp_path) == []


def test_an_input_is_never_an_output(tmp_path, capsys, files):
    model, _, data = files
    image = save_png(tmp_path / "in.png")
    linked = tmp_path / "link.png"
    linked.symlink_to(image)
    hard = tmp_path / "hard.png"
    os.link(image, hard)
    before = snapshot(tmp_path)
    for other in (image, linked, hard):
        cli_error(capsys, ["explain", model, image, "--out", tmp_path / "h.tif", "--overlay", other],
                  "one of the inputs")
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n")
    before = snapshot(tmp_path)
    cli_error(capsys, ["evaluate", model, data, "--csv", listing, "--predictions", listing, "-q"],
              "--predictions", "list.csv", "one of the inputs")
    assert snapshot(tmp_path) == before


def test_per_class_overlays_are_checked_before_the_work(tmp_path, capsys, files, monkeypatch):
    """--target all writes one overlay of every class; it being the input is refused before explaining."""
    import napari_gradcam.engine as engine

    model, _, _ = files
    image = save_png(tmp_path / "o.png")
    monkeypatch.setattr(engine, "explain", lambda *a, **k: pytest.fail("explained before checking"))
    before = snapshot(tmp_path)
    cli_error(capsys, ["explain", model, image, "--out", tmp_path / "h.tif", "--target", "all",
                       "--overlay", image], "o.png", "one of the inputs")
    assert snapshot(tmp_path) == before


def test_unknown_colormap_is_refused_before_the_work(tmp_path, capsys, files):
    model, image, _ = files
    cli_error(capsys, ["explain", model, image, "--out", tmp_path / "h.tif", "--overlay", tmp_path / "o.png",
                       "--colormap", "no-such-map"], "Unknown colormap 'no-such-map'", "inferno")
    assert list(tmp_path.iterdir()) == []


def test_tile_onto_an_existing_file_is_refused_before_the_work(tmp_path, capsys, files):
    model, image, _ = files
    target = tmp_path / "results"
    target.write_bytes(b"previous results")
    cli_error(capsys, ["tile", model, image, "--out", target, "-q"], "results", "not a folder")
    assert target.read_bytes() == b"previous results"


def test_read_only_folder_is_refused_before_the_work(tmp_path, capsys, files):
    model, image, data = files
    with read_only_folder(tmp_path / "ro") as ro:
        for argv in (["explain", model, image, "--out", ro / "h.tif"],
                     ["tile", model, image, "--out", ro / "tiles", "-q"],
                     ["evaluate", model, data, "--json", ro / "r.json", "-q"],
                     ["predict", model, image, "--csv", ro / "sub" / "p.csv", "-q"]):
            cli_error(capsys, argv, "not writable")
        assert list(ro.iterdir()) == []


# ----------------------------------------------------------------------------- a full disk
def test_full_disk_keeps_every_previous_output(tmp_path, capsys, files):
    model, image, data = files
    with full_disk(tmp_path / "disk") as disk:
        first = [
            ["explain", model, image, "--out", disk / "heat.tif", "--overlay", disk / "heat.png"],
            ["tile", model, image, "--tile", "32", "--out", disk / "tiles", "-q"],
            ["evaluate", model, data, "--json", disk / "r.json", "--predictions", disk / "pred.csv", "-q"],
            ["predict", model, data, "--csv", disk / "p.csv", "-q"],
        ]
        for argv in first:
            assert run_cli(capsys, argv)[0] == 0
        fill(disk)
        before = {k: v for k, v in snapshot(disk).items() if k != "filler.bin"}
        assert {"heat.tif", "heat.png", "tiles/breakdown.json", "r.json", "pred.csv", "p.csv"} <= set(before)
        for argv, name in zip(first, ("heat.tif", "heatmap_", "r.json", "p.csv")):
            cli_error(capsys, argv, "Could not write", name, "No space left on device", "unchanged")
            after = {k: v for k, v in snapshot(disk).items() if k != "filler.bin"}
            assert after == before, argv[0]
            assert temp_files(disk) == []


def test_full_disk_keeps_the_previous_model(tmp_path, files):
    """The API too: save_model on a full disk leaves the previous model whole."""
    model, _, _ = files
    bundle = ng.load_model(model, device="cpu")
    with full_disk(tmp_path / "disk", size="4m") as disk:
        saved = disk / "m2.safetensors"
        ng.save_model(bundle, saved)
        fill(disk)
        old = saved.read_bytes()
        with pytest.raises(OutputError) as err:
            ng.save_model(bundle, saved)
        assert "m2.safetensors" in str(err.value) and "\n" not in str(err.value)
        assert err.value.errno == errno.ENOSPC
        assert saved.read_bytes() == old and temp_files(disk) == []


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    """The same guarantee without a mount: a writer that dies half-way with ENOSPC."""
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')

    def half_then_full(tmp: str) -> None:
        Path(tmp).write_text('{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as err:
        atomic_write(target, half_then_full)
    assert str(err.value) == f"Could not write {target} (No space left on device); the previous file is unchanged."
    assert target.read_text() == '{"old": true}' and temp_files(tmp_path) == []
    with pytest.raises(OutputError, match="nothing was written"):
        atomic_write(tmp_path / "new.json", half_then_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_several_files_are_written_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")

    def boom(tmp: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OutputError, match="b.txt"):
        atomic_write_many([(a, lambda t: Path(t).write_text("new a")), (b, boom)])
    assert a.read_text() == "old a" and b.read_text() == "old b" and temp_files(tmp_path) == []
    atomic_write_many([(a, lambda t: Path(t).write_text("new a")), (b, lambda t: Path(t).write_text("new b"))])
    assert a.read_text() == "new a" and b.read_text() == "new b"


def test_a_device_or_folder_is_never_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "dir.json").mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "fifo.json")
    for p, words in ((tmp_path / "fifo.json", "not a regular file"), (tmp_path / "dir.json", "is a folder"),
                     (link, "not a regular file")):
        with pytest.raises(OutputError, match=words):
            atomic_write(p, lambda t: Path(t).write_text("{}"))
    assert (tmp_path / "fifo.json").is_fifo() and link.is_symlink() and temp_files(tmp_path) == []


def test_a_link_is_written_through(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write(link, lambda t: Path(t).write_text("new"))
    assert link.is_symlink() and real.read_text() == "new"


def test_file_modes_are_kept(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("old")
    os.chmod(p, 0o600)
    atomic_write(p, lambda t: Path(t).write_text("new"))
    assert (p.stat().st_mode & 0o777) == 0o600
    q = atomic_write(tmp_path / "y.csv", lambda t: Path(t).write_text("new"))
    assert (q.stat().st_mode & 0o777) == 0o644


# ----------------------------------------------------------------------------- file names from class names
def test_class_names_become_distinct_safe_file_names():
    names = ["a/b", "a_b", "a b", "NORMAL", "normal", "..", "CON", "x\ny", "ok-1.2", "肺炎"]
    stems = safe_file_names(names)
    assert len({s.casefold() for s in stems}) == len(names)
    assert stems[1] == "a_b" and stems[8] == "ok-1.2" and stems[9] == "肺炎"
    assert all("/" not in s and "\\" not in s and not s.startswith(".") and s.isprintable() for s in stems)
    assert stems[0].startswith("a_b-") and stems[2].startswith("a_b-") and stems[6].startswith("CON-")
    assert safe_file_names(names) == stems  # the same class gets the same file name every run


def test_tile_and_overlays_write_one_file_per_class(tmp_path, capsys, files):
    _, image, _ = files
    classes = ["a/b", "a_b", "a b"]
    model = save_tiny_model(tmp_path / "odd.safetensors", classes)
    code, out, err = run_cli(capsys, ["tile", model, image, "--tile", "32", "--out", tmp_path / "t", "-q"])
    assert code == 0, err
    info = json.loads((tmp_path / "t" / "breakdown.json").read_text())
    assert len(set(info["heatmaps"])) == 3 and info["classes"] == classes
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(info["heatmaps"] + ["breakdown.json", "overlay.png"])
    code, _, err = run_cli(capsys, ["explain", model, image, "--out", tmp_path / "h.tif", "--target", "all",
                                    "--overlay", tmp_path / "o.png"])
    assert code == 0, err
    assert (tmp_path / "o.png").is_file() and not list(tmp_path.glob("o_*.png"))  # one overlay with a legend


def test_check_outputs_api(tmp_path):
    paths = check_outputs([(tmp_path / "a.json", "json", "--json"), (None, "csv", "--csv")])
    assert paths == [tmp_path / "a.json", None]
    with pytest.raises(OutputError, match="--json and --report name the same file"):
        check_outputs([(tmp_path / "a.json", "json", "--json"), (tmp_path / "./a.json", "json", "--report")])
    assert list(tmp_path.iterdir()) == []  # checking makes nothing, not even the folder of a new output
    check_outputs([(tmp_path / "new" / "deeper" / "a.json", "json", "--json")])
    assert not (tmp_path / "new").exists()
