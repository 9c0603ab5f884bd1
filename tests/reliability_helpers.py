"""Shared pieces of the issue-15 reliability tests: a tiny saved model, CLI runs that must end in one
sentence, folder snapshots (bytes of every file), and a full or read-only disk made in the test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

PREFIX = "napari-gradcam: error: "


def save_tiny_model(path: Path, classes=("normal", "pneumonia", "covid"), seed: int = 0) -> Path:
    """An untrained simple_cnn (1 channel, 32 px) saved at ``path``."""
    import torch

    import napari_gradcam as ng

    torch.manual_seed(seed)
    ng.save_model(ng.build_model("simple_cnn", list(classes), in_channels=1, input_size=32, device="cpu"), path)
    return path


def save_png(path: Path, shape=(40, 48), seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)).save(path)
    return path


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one in-process CLI run."""
    from napari_gradcam.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_error(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI and check that it failed with exit code 2 and one printable line naming ``words``."""
    code, out, err = run_cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err and line.isprintable(), err
    assert line.startswith(PREFIX) or ": error: " in line, line
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (relative path -> bytes of a file, None for a folder)."""
    snap: dict[str, bytes | None] = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        snap[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return snap


def temp_files(folder: Path) -> list[str]:
    """Temporary files left by a write (``.NAME.XXXX.tmp``) or a probe."""
    return sorted(p.name for p in Path(folder).rglob(".*.tmp"))


def _mount(folder: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                         capture_output=True, text=True)
    return res.returncode == 0


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "1m"):
    """A small tmpfs at ``folder`` (root only; skipped elsewhere); unmounted afterwards.  Use
    :func:`fill` to leave only a little space free after putting the previous outputs there."""
    if not _mount(folder, f"size={size}"):
        pytest.skip("a small tmpfs cannot be mounted here (needs root)")
    try:
        yield folder
    finally:
        _unmount(folder)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` until at most ``leave`` bytes are free; returns the filler file."""
    filler = folder / "filler.bin"
    chunk = b"\0" * 4096
    with open(filler, "ab") as f:
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[: max(1, min(len(chunk), free - leave))])
                f.flush()
            except OSError:
                break
    return filler


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """``folder`` made read-only: a read-only tmpfs as root, else permission bits (skipped where they do not bind)."""
    if os.geteuid() == 0:
        if not _mount(folder, "size=1m,ro"):
            pytest.skip("a read-only tmpfs cannot be mounted here")
        try:
            yield folder
        finally:
            _unmount(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permission bits do not make a folder read-only here")
        yield folder
    finally:
        os.chmod(folder, 0o755)
