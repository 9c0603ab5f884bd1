"""Hostile and broken model files (issue 6, part 1): refused in one sentence, no code run, nothing changed.

For every kind of bad file, ``load_model`` raises ModelFileError with one printable line naming the
problem; a payload that would create a marker file never runs; the model already in use keeps giving
the same answers; the good checkpoint on disk is untouched and still loads; the folder holds no new
files.  The CLI says the same sentence on stderr with exit code 2 and writes no output.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_gradcam as ng
from napari_gradcam.bundle import FORMAT
from napari_gradcam.errors import ModelFileError

CLASSES = ["normal", "pneumonia", "covid"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------- payloads
# Each unpickles to a call that creates ``marker``: the attack a weights file must not be able to make.
class _OsSystem:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class _Lambda:
    """A 'pickled lambda': eval of a lambda expression that is called at once."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"(lambda p: open(p, 'w').close())({self.marker!r})",))


def _raw_global(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle bytes of ``module.name(arg)`` written by hand (GLOBAL, BINUNICODE, TUPLE1, REDUCE)."""
    data = arg.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + len(data).to_bytes(4, "little") + data + b"\x85R.")


def _zip_with_data_pkl(good_sd: dict, path: Path, data_pkl: bytes) -> Path:
    """A real torch.save archive whose data.pkl is replaced by ``data_pkl``."""
    torch.save(good_sd, path)
    with zipfile.ZipFile(path) as z:
        items = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in items:
            z.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else data)
    return path


# ----------------------------------------------------------------------------- the cases
class Ctx(NamedTuple):
    tmp: Path
    marker: Path
    bundle: ng.ModelBundle
    good: Path


class Case(NamedTuple):
    make: Callable[[Ctx], Path]  # writes the bad file, returns its path
    words: tuple[str, ...]  # what the message must say
    kwargs: dict = {}  # load_model arguments (bare weights need an architecture)
    code: bool = False  # carries a payload that must not run


BARE = {"architecture": "simple_cnn", "classes": CLASSES, "input_size": 32}


def _sd(c: Ctx) -> dict:
    return {k: v.contiguous() for k, v in c.bundle.model.state_dict().items()}


def _torch_save(name, obj_fn, **kw):
    def make(c: Ctx) -> Path:
        path = c.tmp / name
        torch.save(obj_fn(c), path, **kw)
        return path
    return make


def _write(name, data_fn):
    def make(c: Ctx) -> Path:
        path = c.tmp / name
        path.write_bytes(data_fn(c))
        return path
    return make


def _resave(name, change=None, version="1", tensors=None, config=None):
    """The good weights with hand-made metadata (``change`` merged into the good config)."""
    def make(c: Ctx) -> Path:
        path = c.tmp / name
        cfg = config if config is not None else json.dumps({**asdict(c.bundle.config), **(change or {})})
        t = tensors(c) if tensors else _sd(c)
        save_file(t, str(path), metadata={"format": FORMAT, "format_version": version, "config": cfg})
        return path
    return make


def _r18_as_r50(c: Ctx) -> Path:
    r18 = ng.build_model("resnet18", ["a", "b"], in_channels=1, input_size=32)
    path = c.tmp / "resnet.safetensors"
    cfg = {**asdict(r18.config), "architecture": "resnet50", "target_layer": ""}
    save_file({k: v.contiguous() for k, v in r18.model.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "format_version": "1", "config": json.dumps(cfg)})
    return path


def _first_half(c: Ctx) -> bytes:
    data = c.good.read_bytes()
    return data[: len(data) // 2]


def _fifo(c: Ctx) -> Path:
    path = c.tmp / "pipe.pt"
    os.mkfifo(path)  # reading it would block forever
    return path


def _zip_bomb(c: Ctx) -> Path:
    """A state dict whose one zeroed tensor deflates 64 MB into about 60 kB."""
    path = c.tmp / "bomb.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    with zipfile.ZipFile(path) as z:
        items = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            if info.filename.endswith("/data/0"):
                data = bytes(64 << 20)
            z.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _scripted(c: Ctx) -> Path:
    import warnings

    path = c.tmp / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but such files exist
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())), str(path))
    return path


CASES = {
    # --- code-carrying pickles: refused by the weights-only unpickler; the marker never appears
    "reduce-os-system": Case(_torch_save("evil.pt", lambda c: {"state_dict": _sd(c), "x": _OsSystem(c.marker)}),
                             ("evil.pt", "code"), BARE, True),
    "builtins-exec": Case(_write("exec.pth", lambda c: pickle.dumps(_Exec(c.marker), protocol=2)),
                          ("exec.pth", "code"), BARE, True),
    "pickled-lambda": Case(_write("lambda.bin", lambda c: pickle.dumps({"w": _Lambda(c.marker)}, protocol=4)),
                           ("lambda.bin", "code"), BARE, True),
    "zip-data-pkl-os-system": Case(
        lambda c: _zip_with_data_pkl(_sd(c), c.tmp / "zipped.pt", _raw_global("os", "system", f"touch '{c.marker}'")),
        ("zipped.pt", "code"), BARE, True),
    "zip-data-pkl-posix-system": Case(
        lambda c: _zip_with_data_pkl(_sd(c), c.tmp / "posix.pt", _raw_global("posix", "system", f"touch '{c.marker}'")),
        ("posix.pt", "code"), BARE, True),
    "raw-builtins-eval": Case(
        _write("eval.pt", lambda c: _raw_global("builtins", "eval", f"open({str(c.marker)!r}, 'w')")),
        ("eval.pt", "code"), BARE, True),
    "legacy-format-payload": Case(
        _torch_save("legacy.pt", lambda c: {**_sd(c), "x": _OsSystem(c.marker)}, _use_new_zipfile_serialization=False),
        ("legacy.pt", "code"), BARE, True),
    "pickle-named-safetensors": Case(_write("evil.safetensors", lambda c: pickle.dumps(_OsSystem(c.marker))),
                                     ("evil.safetensors", "not a readable .safetensors"), {}, True),
    "whole-pickled-module": Case(_torch_save("whole.pt", lambda c: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))),
                                 ("whole.pt", "state_dict"), BARE),
    "torchscript": Case(_scripted, ("TorchScript",), BARE),
    # --- broken files
    "truncated-safetensors": Case(_write("half.safetensors", _first_half),
                                  ("half.safetensors", "truncated")),
    "cut-after-5-bytes": Case(_write("cut.safetensors", lambda c: c.good.read_bytes()[:5]), ("cut.safetensors",)),
    "corrupted-header": Case(_write("flipped.safetensors",
                                    lambda c: (lambda b: b[:20] + bytes([b[20] ^ 0xFF]) + b[21:])(c.good.read_bytes())),
                             ("flipped.safetensors", "corrupted")),
    "random-bytes": Case(_write("noise.pt", lambda c: np.random.default_rng(0).bytes(5000)), ("noise.pt",), BARE),
    "empty": Case(_write("empty.safetensors", lambda c: b""), ("empty",)),
    "directory": Case(lambda c: (c.tmp / "folder.safetensors").mkdir() or c.tmp / "folder.safetensors", ("folder",)),
    "missing": Case(lambda c: c.tmp / "nope.safetensors", ("No model file", "nope.safetensors")),
    "fifo": Case(_fifo, ("pipe.pt", "not a regular file"), BARE),
    "zip-bomb": Case(_zip_bomb, ("bomb.pt", "expand"), BARE),
    "name-too-long": Case(lambda c: c.tmp / ("m" * 300 + ".safetensors"), ("cannot be used", "too long")),
    "null-byte-in-name": Case(lambda c: Path(str(c.tmp / "a\0b.safetensors")), ("cannot be used", "null byte")),
    "path-through-a-file": Case(lambda c: c.good / "model.safetensors", ("cannot be used",)),
    "newline-in-name": Case(_write("two\nlines.safetensors", lambda c: b"junk" * 10), ("lines.safetensors",)),
    # --- valid weights, wrong metadata
    "class-count": Case(_resave("count.safetensors", {"classes": ["a", "b"]}), ("count.safetensors", "3 classes",
                                                                               "2 classes")),
    "resnet18-labelled-resnet50": Case(_r18_as_r50, ("resnet.safetensors", "resnet50", "look like resnet18")),
    "in-channels": Case(_resave("rgb.safetensors", {"in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}),
                        ("rgb.safetensors", "1 input channel", "described with 3")),
    "input-size-too-small": Case(_resave("small.safetensors", {"input_size": 8}), ("small.safetensors", "input_size")),
    "input-size-too-large": Case(_resave("large.safetensors", {"input_size": 100_000}), ("input_size", "100000")),
    "input-size-not-int": Case(_resave("float.safetensors", {"input_size": 32.5}), ("input_size", "integer")),
    "future-format-version": Case(_resave("future.safetensors", version="7"), ("future.safetensors", "newer")),
    "negative-format-version": Case(_resave("past.safetensors", version="-1"), ("past.safetensors", "damaged")),
    "deeply-nested-json": Case(_resave("deep.safetensors", config="[" * 100_000 + "]" * 100_000),
                               ("deep.safetensors", "damaged")),
    "huge-class-list": Case(_resave("many.safetensors", {"classes": [f"c{i}" for i in range(300_000)]}),
                            ("many.safetensors", "3 classes", "300000 classes")),
    "class-name-with-newline": Case(_resave("names.safetensors", {"classes": ["a", "b\nc", "d"]}),
                                    ("names.safetensors", "one line")),
    "integer-weights": Case(_resave("ints.safetensors",
                                    tensors=lambda c: {k: v.to(torch.int32) for k, v in _sd(c).items()}),
                            ("ints.safetensors", "floating point")),
}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking bundle saved to disk, and the 'previous model': the same file loaded and in use."""
    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", CLASSES, in_channels=1, input_size=32)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics
        for name, t in b.model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    path = ng.save_model(b, tmp_path_factory.mktemp("good") / "good.safetensors")
    return b, path


@pytest.fixture(scope="module")
def probe():
    return np.random.default_rng(7).integers(0, 255, (3, 40, 48)).astype(np.uint8)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _torch_state() -> tuple:
    return (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads(),
            torch.is_inference_mode_enabled())


def one_line(msg: str) -> str:
    assert msg and "\n" not in msg and msg.isprintable(), f"not one clear line: {msg!r}"
    assert len(msg) < 500, f"message too long to read: {len(msg)} characters"
    return msg


# ----------------------------------------------------------------------------- core
@pytest.mark.parametrize("kind", list(CASES))
def test_bad_model_file_is_refused_and_nothing_changes(kind, saved, probe, tmp_path):
    case = CASES[kind]
    bundle, good = saved
    active = ng.load_model(good, device="cpu")  # the model in use before the failed load
    before, weights, digest, state = ng.predict(active, probe), _snapshot(active.model), _digest(good), _torch_state()
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(work, tmp_path / "pwned", bundle, good)
    bad = case.make(ctx)
    listing = sorted(p.name for p in work.iterdir())

    with pytest.raises(ModelFileError) as err:
        ng.load_model(bad, device="cpu", **case.kwargs)
    msg = one_line(str(err.value))
    for w in case.words:
        assert w in msg, f"{w!r} not in {msg!r}"

    assert not ctx.marker.exists(), "loading the file ran its code"
    assert sorted(p.name for p in work.iterdir()) == listing, "loading created or removed files"
    assert _torch_state() == state
    # the previous model is still active and unchanged
    np.testing.assert_array_equal(ng.predict(active, probe), before)
    after = active.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert not active.model.training and all(p.grad is None for p in active.model.parameters())
    # the good checkpoint is untouched and still loads to the same model
    assert _digest(good) == digest
    np.testing.assert_array_equal(ng.predict(ng.load_model(good, device="cpu"), probe), before)


def test_payloads_would_run_if_unpickled(tmp_path):
    """The payload classes are real attacks: plain pickle.loads runs them (so the test above means something)."""
    for cls in (_OsSystem, _Exec, _Lambda):
        marker = tmp_path / cls.__name__
        pickle.loads(pickle.dumps(cls(marker)))
        assert marker.exists()
    marker = tmp_path / "raw"
    pickle.loads(_raw_global("os", "system", f"touch '{marker}'"))
    assert marker.exists()


def test_failures_in_a_row_then_a_good_load(saved, probe, tmp_path):
    """Several failed loads in a row leave no state behind: the next good load works as the first did."""
    bundle, good = saved
    first = ng.predict(ng.load_model(good, device="cpu"), probe)
    ctx = Ctx(tmp_path, tmp_path / "pwned", bundle, good)
    for kind in ("reduce-os-system", "truncated-safetensors", "class-count", "resnet18-labelled-resnet50", "missing"):
        with pytest.raises(ModelFileError):
            ng.load_model(CASES[kind].make(ctx), device="cpu", **CASES[kind].kwargs)
    np.testing.assert_array_equal(ng.predict(ng.load_model(good, device="cpu"), probe), first)
    assert not ctx.marker.exists()


def test_huge_class_list_is_refused_before_building_the_network(saved, tmp_path, monkeypatch):
    """Metadata naming 300,000 classes must not allocate a 300,000-way head first."""
    import napari_gradcam.models as models_module

    bundle, good = saved
    path = CASES["huge-class-list"].make(Ctx(tmp_path, tmp_path / "m", bundle, good))
    real = models_module.build_network
    built = []

    def spy(arch, n_classes, *args, **kwargs):
        built.append((n_classes, str(torch.empty(0).device)))
        return real(arch, n_classes, *args, **kwargs)

    monkeypatch.setattr(models_module, "build_network", spy)
    with pytest.raises(ModelFileError):
        ng.load_model(path, device="cpu")
    assert built and all(dev == "meta" for _, dev in built), built


def test_unreadable_file_is_one_sentence(saved, tmp_path, monkeypatch):
    """A file that cannot be opened (permissions; root cannot be denied, so open is made to fail)."""
    import builtins

    _, good = saved
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(good.read_bytes())
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(locked, device="cpu")
    assert "locked.safetensors" in one_line(str(err.value)) and "Permission denied" in str(err.value)


# ----------------------------------------------------------------------------- CLI
CLI_KINDS = ["reduce-os-system", "zip-data-pkl-os-system", "pickle-named-safetensors", "truncated-safetensors",
             "empty", "directory", "missing", "class-count", "resnet18-labelled-resnet50", "future-format-version",
             "newline-in-name"]


@pytest.fixture(scope="module")
def cli_main():
    cli = pytest.importorskip("napari_gradcam.cli")
    if not hasattr(cli, "main"):
        pytest.skip("napari_gradcam.cli.main is not there yet")
    return cli.main


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48)).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", CLI_KINDS)
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_cli_refuses_bad_model_with_one_line_and_exit_2(kind, command, cli_main, saved, image_file, tmp_path, capsys):
    case = CASES[kind]
    bundle, good = saved
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(work, tmp_path / "pwned", bundle, good)
    bad = case.make(ctx)
    out = tmp_path / ("out.csv" if command == "predict" else "heat.tif")
    argv = ([command, str(bad), str(image_file), "--csv", str(out)] if command == "predict"
            else [command, str(bad), str(image_file), "--out", str(out)])
    capsys.readouterr()
    code = cli_main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith("napari-gradcam: error: ")
    for w in case.words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not out.exists() and captured.out == ""
    assert not ctx.marker.exists()
