"""``napari-gradcam demo`` without a display (#14): one sentence, or a screenshot under Xvfb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("napari")


def _run_demo(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return subprocess.run([sys.executable, "-m", "napari_gradcam", "demo", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="displays are a Linux/X11 matter")
def test_demo_without_a_display_says_what_to_do(tmp_path):
    proc = _run_demo(tmp_path=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0], proc.stderr
    assert "xvfb-run -a napari-gradcam demo" in lines[0] and "--screenshot" in lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="displays are a Linux/X11 matter")
def test_demo_screenshot_without_a_display(tmp_path):
    from napari_gradcam.data import demo_model_path

    if shutil.which("xvfb-run") is None:
        pytest.skip("Xvfb is not installed")
    if not demo_model_path().is_file():
        pytest.skip("no demo model")
    proc = _run_demo("--screenshot", "demo.png", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "demo.png").is_file() and "wrote" in proc.stdout
