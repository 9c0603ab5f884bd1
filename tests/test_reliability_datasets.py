"""Reliability of data sets (issue #6, part 5): empty folders, one class, unreadable files, symbolic
link loops, non-image files and 1,000 classes, through the core (scan_folder), training and the CLI.

Every user error must end in one clear sentence (DatasetError; exit code 2 on the command line),
never a traceback or a hang, and must leave the data folder as it was and no model file behind.
"""

from __future__ import annotations

import builtins
import csv
import errno
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_gradcam.cli import main
from napari_gradcam.data import ImageDataset, scan_folder, walk_files
from napari_gradcam.errors import DatasetError

#: chmod 000 stops reads only for a non-root user on a POSIX system; elsewhere the tests refuse the reads themselves.
CHMOD_BLOCKS_READS = os.name == "posix" and os.geteuid() != 0
posix_only = pytest.mark.skipif(os.name != "posix", reason="symbolic links and pipes as on Linux and macOS")


pytestmark = pytest.mark.usefixtures("torch_one_thread_module")  # tiny models: no OpenMP spinning


def _png(path: Path, arr: np.ndarray | None = None, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / c / f"{c}_{i}.png", seed=i)
    return root


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): mode, size, mtime and target, to show nothing changed."""
    if not os.path.lexists(root):
        return {}
    if not root.is_dir() or root.is_symlink():
        return {".": (root.is_symlink(), os.lstat(root).st_size)}
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             os.readlink(p) if p.is_symlink() else None)
    return out


def _one_sentence(msg: str, *words: str) -> None:
    assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, msg


def _cli_error(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    _one_sentence(err, *words)
    return err


def _returns_within(fn, seconds: float = 20.0):
    """fn() run in a thread: its result, or a failure if it has not returned in time (a hang)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no answer after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reasons(data_or_list) -> dict[str, str]:
    skipped = getattr(data_or_list, "skipped", data_or_list)
    return {p.name: why for p, why in skipped}


@pytest.fixture(scope="module")
def model_ab(tmp_path_factory) -> Path:
    """An untrained simple_cnn for classes a and b, 32 px, saved."""
    import torch

    import napari_gradcam as ng

    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", ["a", "b"], in_channels=1, input_size=32, device="cpu")
    return ng.save_model(b, tmp_path_factory.mktemp("model") / "ab.safetensors")


def _nothing_written(out: Path) -> None:
    """No model, checkpoint, temporary file or output folder was left by a refused run."""
    assert not out.parent.exists()


def _train_argv(root: Path, out: Path) -> list[str]:
    return ["train", str(root), "--out", str(out), "--image-size", "32", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "-q"]


# ----------------------------------------------------------------------------- 1. nothing to train on
@pytest.mark.parametrize("case", ["empty", "empty_classes", "missing", "file"])
def test_no_images_is_one_sentence_everywhere(tmp_path, capsys, model_ab, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "empty_classes":
        for c in ("a", "b/nested/deeper"):
            (root / c).mkdir(parents=True)
    elif case == "file":
        root.write_text("not a folder")
    expected = {
        "empty": f"No readable images were found in {root}; expected one subfolder of images per class.",
        "empty_classes": f"No readable images were found in {root}; expected one subfolder of images per class.",
        "missing": f"No data folder at {root}.",
        "file": f"{root} is a file, not a folder of class subfolders.",
    }[case]
    before = _snapshot(root)
    with pytest.raises(DatasetError) as e:
        scan_folder(root).check_trainable()
    assert str(e.value) == expected

    out = tmp_path / "out" / "m.safetensors"
    err = _cli_error(capsys, _train_argv(root, out))
    assert err == f"napari-gradcam: error: {expected}"
    _nothing_written(out)

    words = {"missing": "No data folder", "file": "not a folder"}.get(case, "No readable images of the model's classes")
    _cli_error(capsys, ["evaluate", str(model_ab), str(root), "-q"], words)
    if case == "file":  # a file given to predict is read as an image
        _cli_error(capsys, ["predict", str(model_ab), str(root), "-q"], "None of the 1 file(s) could be read")
    else:
        err = _cli_error(capsys, ["predict", str(model_ab), str(root), "-q"], "No image files were found")
        assert ("not found" in err) == (case == "missing")
    assert _snapshot(root) == before


# ----------------------------------------------------------------------------- 2. one class
def test_one_class_is_refused_by_name(tmp_path, capsys):
    from napari_gradcam.train import TrainConfig, run_training

    root = _classes(tmp_path / "data", {"only": 4})
    (root / "empty_class").mkdir()  # an empty class folder is not a second class
    before = _snapshot(root)
    data = scan_folder(root)
    assert data.classes == ["only"] and len(data) == 4 and data.skipped == []
    expected = (f"Only one class ('only') was found in {root}; "
                "a classifier needs at least two class subfolders.")
    with pytest.raises(DatasetError) as e:
        data.check_trainable()
    assert str(e.value) == expected

    out = tmp_path / "out" / "m.safetensors"
    cfg = TrainConfig(data_dir=str(root), out=str(out), image_size=32, epochs=1, batch_size=4, device="cpu")
    with pytest.raises(DatasetError) as e:
        run_training(cfg)
    assert str(e.value) == expected
    assert _cli_error(capsys, _train_argv(root, out)) == f"napari-gradcam: error: {expected}"
    _nothing_written(out)
    assert _snapshot(root) == before


def test_one_class_evaluates_and_predicts(tmp_path, capsys, model_ab):
    """A test folder with only one of the model's classes is a fair question: answered, AUC undefined."""
    import json

    root = _classes(tmp_path / "data", {"a": 3})
    report = tmp_path / "r.json"
    assert main(["evaluate", str(model_ab), str(root), "--json", str(report), "-q"]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and captured.err == ""
    r = json.loads(report.read_text())
    assert r["roc_auc"] is None and np.sum(r["confusion_matrix"]) == 3
    assert r["confusion_matrix"][1] == [0, 0]  # no b images: its row is empty

    pred = tmp_path / "p.csv"
    assert main(["predict", str(model_ab), str(root), "--csv", str(pred), "-q"]) == 0
    rows = list(csv.DictReader(pred.open()))
    assert [Path(r["path"]).name for r in rows] == ["a_0.png", "a_1.png", "a_2.png"]


# ----------------------------------------------------------------------------- 3. unreadable files
@pytest.fixture
def deny(monkeypatch):
    """deny(path): make a file or folder unreadable: chmod 000, and where that does not stop reads (root,
    Windows) refuse open() of the file or listing of the folder with the PermissionError a user would get."""
    denied: set[str] = set()
    real_open, real_scandir = builtins.open, os.scandir

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def is_denied(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(path) in denied

    def fake_open(file, *a, **kw):
        if is_denied(file):
            refuse(file)
        return real_open(file, *a, **kw)

    def fake_scandir(path="."):
        if is_denied(path):
            refuse(path)
        return real_scandir(path)

    if not CHMOD_BLOCKS_READS:
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "scandir", fake_scandir)

    def apply(path: Path) -> Path:
        denied.add(os.path.realpath(path))
        path.chmod(0)
        return path

    yield apply
    for p in denied:
        Path(p).chmod(0o755)  # so that pytest can clean up


@posix_only
def test_unreadable_files_are_skipped_with_reasons(tmp_path, capsys, deny, model_ab):
    """Zero-byte, garbage, permission-000 files and pipes are listed with why; odd but valid images are used."""
    import tifffile

    root = _classes(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "garbage.png").write_bytes(os.urandom(64))
    _png(root / "a" / "denied.png")
    _png(root / "b" / "locked" / "inside.png")
    rng = np.random.default_rng(1)
    odd = {
        "one_pixel.png": np.array([[7]], np.uint8),
        "rgba.png": rng.integers(0, 255, (9, 7, 4), dtype=np.uint8),
        "gray16.png": rng.integers(0, 65535, (10, 6), dtype=np.uint16),
        "line.png": rng.integers(0, 255, (1, 40), dtype=np.uint8),
    }
    for name, arr in odd.items():
        _png(root / "b" / name, arr)
    tifffile.imwrite(root / "b" / "float.tif", rng.random((5, 5)).astype(np.float32))
    tifffile.imwrite(root / "b" / "rgb16.tif", rng.integers(0, 65535, (6, 6, 3), dtype=np.uint16))
    deny(root / "a" / "denied.png")
    deny(root / "b" / "locked")
    os.mkfifo(root / "a" / "pipe.png")  # opening it for reading would wait for a writer forever
    before = _snapshot(root)

    data = scan_folder(root)
    assert data.class_counts() == {"a": 3, "b": 3 + len(odd) + 2}
    why = _reasons(data)
    assert sorted(why) == ["denied.png", "garbage.png", "locked", "pipe.png", "zero.png"]
    assert why["pipe.png"] == "not a regular file (a pipe, socket or device)"
    assert why["zero.png"] == "empty file"
    assert why["garbage.png"].startswith("UnidentifiedImageError")
    assert "Permission denied" in why["denied.png"]
    assert why["locked"] == "the folder could not be read (Permission denied)"
    assert all("\n" not in r for r in why.values())
    assert data.unreadable_classes == {}
    data.check_trainable()

    # the odd images decode to network inputs like any other (nothing falls back to a substitute)
    ds = ImageDataset(data, 1, 32, [0.5], [0.25], cache=False)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and np.isfinite(x.numpy()).all()
    assert ds.failed == []
    fifo = root / "a" / "pipe.png"
    _cli_error(capsys, ["predict", str(model_ab), str(fifo)], f"No image files were found in {fifo} "
               f"({fifo}: not a regular file).")
    assert _snapshot(root) == before


def test_a_class_of_only_unreadable_files_is_named(tmp_path, capsys, model_ab):
    root = _classes(tmp_path / "data", {"a": 3})
    (root / "b").mkdir()
    (root / "b" / "zero.png").write_bytes(b"")
    (root / "b" / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "b" / "readme.txt").write_text("not an image, not counted as unreadable")
    before = _snapshot(root)

    data = scan_folder(root)
    assert data.classes == ["a"]
    assert sorted(data.unreadable_classes) == ["b"]
    assert sorted(p.name for p, _ in data.unreadable_classes["b"]) == ["junk.jpg", "zero.png"]
    expected = "None of the 2 image file(s) of class 'b' could be read (e.g. junk.jpg: "
    with pytest.raises(DatasetError) as e:
        data.check_trainable()
    assert str(e.value).startswith(expected) and str(e.value).endswith("; replace or remove them.")
    _one_sentence(str(e.value))

    out = tmp_path / "out" / "m.safetensors"
    _cli_error(capsys, _train_argv(root, out), "of class 'b' could be read", "junk.jpg")
    _nothing_written(out)
    # evaluation goes ahead on what can be read, and says what it skipped
    assert main(["evaluate", str(model_ab), str(root), "-q"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("3 file(s) skipped, e.g. ") and len(err.splitlines()) == 1
    # every class unreadable: one sentence, from the core and from the CLI
    for f in (root / "a").iterdir():
        f.write_bytes(b"")
    data = scan_folder(root)
    assert data.items == [] and sorted(data.unreadable_classes) == ["a", "b"]
    with pytest.raises(DatasetError) as e:
        data.check_trainable()
    _one_sentence(str(e.value), f"None of the 5 image file(s) in {root} could be read")
    _cli_error(capsys, _train_argv(root, out), "None of the 5 image file(s)")
    _cli_error(capsys, ["evaluate", str(model_ab), str(root), "-q"],
               "None of the 5 image file(s) of the model's classes")
    _nothing_written(out)
    assert set(_snapshot(root)) == set(before)


# ----------------------------------------------------------------------------- 4. symbolic links
@posix_only
def test_symlink_loops_terminate_and_are_listed(tmp_path, capsys, model_ab):
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    os.symlink(root / "a", root / "a" / "to_parent")  # a/to_parent -> a
    (root / "a" / "sub").mkdir()
    os.symlink(root, root / "a" / "sub" / "to_root")  # a/sub/to_root -> data
    os.symlink("loop.png", root / "a" / "loop.png")  # points at itself
    os.symlink(tmp_path / "gone.png", root / "b" / "dangling.png")
    os.symlink(root, root / "everything")  # a "class" that is the whole data folder
    os.symlink(tmp_path / "nowhere", root / "ghost")  # a dangling class folder
    os.symlink("x1", root / "b" / "x2")  # two links pointing at each other
    os.symlink("x2", root / "b" / "x1")
    before = _snapshot(root)

    t0 = time.perf_counter()
    data = _returns_within(lambda: scan_folder(root))
    assert time.perf_counter() - t0 < 5
    assert data.classes == ["a", "b"] and data.class_counts() == {"a": 2, "b": 2}
    assert len({os.path.realpath(p) for p in data.paths}) == 4
    why = _reasons(data)
    assert why == {
        "to_parent": "a link to an enclosing folder (a loop), not followed",
        "to_root": "a link to an enclosing folder (a loop), not followed",
        "loop.png": "a symbolic link loop",
        "dangling.png": "a broken link (its target does not exist)",
        "everything": "a link to the data folder itself (a loop), not a class",
        "ghost": "a broken link (its target does not exist)",
        "x1": "a symbolic link loop",
        "x2": "a symbolic link loop",
    }
    data.check_trainable()

    # the same folder through the command line: each real image once (also when named twice),
    # the links reported, no hang
    again = root / "a" / "a_0.png"
    code = _returns_within(lambda: main(["predict", str(model_ab), str(root), str(again), "-q"]))
    captured = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert sorted(Path(r["path"]).name for r in rows) == ["a_0.png", "a_1.png", "b_0.png", "b_1.png"]
    assert f"skipped {root / 'b' / 'dangling.png'}: a broken link (its target does not exist)" in captured.err
    assert f"skipped {again}: the same file as {again}, listed once" in captured.err
    assert "Traceback" not in captured.err
    assert _snapshot(root) == before


@posix_only
def test_symlinked_images_count_once_in_the_class_that_holds_them(tmp_path):
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    _png(root / "a" / "nested" / "deeper" / "a_deep.png")
    outside = _classes(tmp_path / "elsewhere", {"c": 2, "shared": 1})
    os.symlink(root / "a" / "a_0.png", root / "a" / "again.png")  # a second name in the same class
    os.symlink(root / "a" / "nested", root / "a" / "nested_again")  # the same subfolder twice
    os.symlink(root / "a" / "a_1.png", root / "b" / "borrowed.png")  # a's image linked into b
    os.symlink(outside / "shared" / "shared_0.png", root / "a" / "shared.png")  # an outside image in a...
    os.symlink(outside / "shared" / "shared_0.png", root / "b" / "shared.png")  # ...and in b
    os.symlink(outside / "c", root / "c")  # a class folder kept elsewhere
    os.symlink(root / "b", root / "b_alias")  # the same class folder under two names

    data = _returns_within(lambda: scan_folder(root))
    assert data.classes == ["a", "b", "c"]
    assert data.class_counts() == {"a": 3, "b": 2, "c": 2}
    assert [p.name for p in data.paths if p.parent.name == "c"] == ["c_0.png", "c_1.png"]
    assert len({os.path.realpath(p) for p in data.paths}) == len(data)  # no image twice
    why = {str(p.relative_to(root)): r for p, r in data.skipped}
    assert why == {
        "b_alias": "the same folder as b, not a class of its own",
        "a/nested_again": f"the same folder as {root / 'a' / 'nested'}, listed once",
        "a/again.png": f"the same file as {root / 'a' / 'a_0.png'}, listed once",
        "b/borrowed.png": f"a link to {root / 'a' / 'a_1.png'}, an image of class 'a'",
        "a/shared.png": "the same file is in classes 'a', 'b', so its class is ambiguous",
        "b/shared.png": "the same file is in classes 'a', 'b', so its class is ambiguous",
    }
    # a link from the outside is as good as a file: the split still keeps every class on both sides
    data = scan_folder(root, group_pattern=None)
    data.check_trainable()
    train, val = data.split(0.3, seed=0)
    assert set(train.labels) == set(val.labels) == {0, 1, 2}


@posix_only
def test_walk_files_follows_links_outside_once(tmp_path):
    shared = _classes(tmp_path / "shared", {"imgs": 2})
    top = tmp_path / "top"
    (top / "x").mkdir(parents=True)
    os.symlink(shared, top / "x" / "link1")
    os.symlink(shared / "imgs", top / "link2")  # inside what link1 reaches
    os.symlink(top, shared / "back")  # and from there back to the start
    files, passed = _returns_within(lambda: walk_files(top))
    assert [str(p.relative_to(top)) for p, _ in files] == ["link2/imgs_0.png", "link2/imgs_1.png"]
    assert [r for _, r in files] == [os.path.realpath(shared / "imgs" / f"imgs_{i}.png") for i in range(2)]
    assert {str(p.relative_to(top)): r for p, r in passed} == {
        "x/link1/imgs": f"the same folder as {top / 'link2'}, listed once",
        "x/link1/back": "a link to an enclosing folder (a loop), not followed",
    }


# ----------------------------------------------------------------------------- 5. non-image files
def test_non_image_files_are_listed_or_ignored(tmp_path, capsys, model_ab):
    import tifffile

    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    _png(root / "a" / "UPPER.PNG")
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "a" / "photo.JPG", format="JPEG")
    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(root / "b" / "scan.Jpeg", format="JPEG")
    tifffile.imwrite(root / "b" / "stack.TIF", np.zeros((8, 8), np.uint16))
    _png(root / "b" / "nested" / "sub" / "deep.png")
    for name, data in {"notes.txt": b"notes", "labels.csv": b"path,label\n", "Thumbs.db": b"\0\1",
                       "LICENSE": b"BSD"}.items():
        (root / "a" / name).write_bytes(data)
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _png(root / "a" / ".hidden.png")  # hidden: ignored like .DS_Store
    _png(root / "a" / ".git" / "objects" / "x.png")  # hidden folder
    (root / "a" / "__MACOSX").mkdir()
    (root / "a" / "__MACOSX" / "._a_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    _png(root / "__MACOSX" / "a" / "junk.png")  # macOS archive debris at the top: not a class
    (root / "README.txt").write_text("a data set")  # top-level notes: not images, not classes
    before = _snapshot(root)

    data = scan_folder(root)
    assert data.classes == ["a", "b"]
    names = sorted(p.name for p in data.paths)
    assert names == ["UPPER.PNG", "a_0.png", "a_1.png", "b_0.png", "b_1.png", "deep.png", "photo.JPG",
                     "scan.Jpeg", "stack.TIF"]
    assert _reasons(data) == {
        "LICENSE": "not an image file type (no suffix)",
        "Thumbs.db": "not an image file type (.db)",
        "labels.csv": "not an image file type (.csv)",
        "notes.txt": "not an image file type (.txt)",
    }
    ds = ImageDataset(data, 1, 32, [0.5], [0.25], cache=False)
    assert all(ds[i][0].shape == (1, 32, 32) for i in range(len(ds))) and ds.failed == []

    # predict reads the same images from the folder and leaves the other files alone, silently
    assert main(["predict", str(model_ab), str(root), "-q"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert sorted(Path(r["path"]).name for r in rows) == names and captured.err == ""
    assert _snapshot(root) == before


# ----------------------------------------------------------------------------- 6. 1,000 classes
def test_a_thousand_classes(tmp_path, capsys):
    """Scan, split, train one short epoch, save and predict with 1,000 classes, in seconds."""
    import napari_gradcam as ng
    from napari_gradcam.train import TrainConfig, run_training

    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    pngs = []
    for k in range(8):  # a few distinct 8x8 images, written many times over
        buf = io.BytesIO()
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    root = tmp_path / "data"
    names = [f"class {k}" for k in range(1000)]  # unpadded: sorted order is not numeric order
    for k, c in enumerate(names):
        d = root / c
        d.mkdir(parents=True)
        for i in range(2 + k % 2):
            (d / f"p{k}_{i}.png").write_bytes(pngs[(k + i) % len(pngs)])
    n_images = sum(2 + k % 2 for k in range(1000))
    t_written = time.perf_counter()

    data = scan_folder(root, group_pattern=None)
    t_scan = time.perf_counter() - t_written
    assert t_scan < 10, t_scan
    assert data.classes == sorted(names) and data.classes[:3] == ["class 0", "class 1", "class 10"]
    assert len(data) == n_images and data.skipped == []
    counts = data.class_counts()
    assert counts == {c: 2 + int(c.split()[1]) % 2 for c in sorted(names)}
    data.check_trainable()
    train_data, val_data = data.split(0.2, seed=0)
    assert np.array_equal(np.bincount(val_data.labels, minlength=1000), np.ones(1000))  # stratified: one each
    assert np.all(np.bincount(train_data.labels, minlength=1000) >= 1)
    assert not {str(p) for p in train_data.paths} & {str(p) for p in val_data.paths}

    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(data_dir=str(root), out=str(out), group_pattern="none", image_size=32, epochs=1,
                      batch_size=64, steps_per_epoch=4, augment=False, device="cpu", patience=None)
    t0 = time.perf_counter()
    result = run_training(cfg, data=data)
    t_train = time.perf_counter() - t0
    assert result.best_path is not None and Path(result.best_path).is_file()
    bundle = ng.load_model(out, device="cpu")
    assert bundle.classes == sorted(names) and bundle.n_classes == 1000

    pred = tmp_path / "p.csv"
    files = [str(root / "class 999" / "p999_0.png"), str(root / "class 10")]
    assert main(["predict", str(out), *files, "--csv", str(pred), "-q"]) == 0
    with pred.open() as f:
        header, *rows = list(csv.reader(f))
    assert header == ["path", "predicted", *[f"p_{c}" for c in sorted(names)]]
    assert len(rows) == 3 and all(len(r) == 1002 and r[1] in names for r in rows)
    assert np.allclose([sum(map(float, r[2:])) for r in rows], 1, atol=1e-3)
    # the model's 1,000 classes are named by their number in messages, not listed
    part = scan_folder(root, classes=names[:500], check=False)
    assert len(part.classes) == 500 and len(part.skipped) == n_images - len(part)
    assert {r for _, r in part.skipped} == {f"class {c!r} is not one of the 500 requested classes"
                                            for c in names[500:]}
    _png(tmp_path / "other" / "zzz" / "nested" / "x.png")
    err = _cli_error(capsys, ["evaluate", str(out), str(tmp_path / "other"), "-q"])
    assert err.endswith("No readable images of the model's classes (1000 classes) were found in "
                        f"{tmp_path / 'other'} (it has zzz).")
    total = time.perf_counter() - t_start
    print(f"\n1,000 classes: write {t_written - t_start:.1f} s, scan {t_scan:.2f} s, "
          f"train {t_train:.1f} s, total {total:.1f} s")
    assert total < 60, total
