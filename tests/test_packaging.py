"""Packaging (#14): the manifest inside the package, the shipped demo model in the wheel, and a core
install (no extras) that runs ``tile`` and ``explain --overlay`` without an undeclared import."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_copies_are_identical():
    """The real napari.yaml lives in the package (no symlink); the top-level one is a copy of it."""
    packaged = ROOT / "src" / "napari_gradcam" / "napari.yaml"
    assert packaged.is_file() and not packaged.is_symlink()
    assert (ROOT / "napari.yaml").read_bytes() == packaged.read_bytes()


def test_one_display_name():
    """Docks are titled with the plugin's name, menus with the manifest's display name: both say the same."""
    import yaml

    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    assert manifest["display_name"] == manifest["name"] == "napari-gradcam"


def test_demo_model_found_in_the_checkout():
    from napari_gradcam.data import demo_model_path
    from napari_gradcam.shipped import SEARCH_PATH

    path = demo_model_path()
    assert path.is_file() and path.parent in SEARCH_PATH
    assert (ROOT / "sample_data" / "demo_model.safetensors").is_file()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("napari_gradcam-*.whl")
    return whl


def test_wheel_has_manifest_and_demo_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_gradcam/napari.yaml" in names
    assert "napari_gradcam/sample_data/demo_model.safetensors" in names
    with zipfile.ZipFile(wheel) as z:
        assert z.read("napari_gradcam/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari-gradcam = napari_gradcam:napari.yaml" in entry_points


@pytest.fixture(scope="module")
def core_site(wheel, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return site


def _core_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(Path(__file__).with_name("core_install_check.py")), str(site), "--",
                           *args], capture_output=True, text=True, timeout=300, env=env, cwd=site.parent)


@pytest.mark.slow
def test_core_install_runs_tile_and_explain(core_site, tmp_path):
    """From the installed wheel, with only the core requirements (and what they require) importable:
    the demo model is found inside the package, and tile / explain --overlay write their files."""
    import tifffile

    from napari_gradcam.phantoms import make_mosaic, make_xray

    image = tmp_path / "xray.tif"
    tifffile.imwrite(image, make_xray("covid", size=256, seed=1).image)
    mosaic = tmp_path / "mosaic.png"
    from PIL import Image

    Image.fromarray(make_mosaic((256, 384), tile=128, seed=1)[0]).save(mosaic)
    demo = str(core_site / "napari_gradcam" / "sample_data" / "demo_model.safetensors")
    runs = {
        "explain": ["explain", demo, str(image), "--target", "all", "--out", str(tmp_path / "h.tif"),
                    "--overlay", str(tmp_path / "h.png")],
        "tile": ["tile", demo, str(mosaic), "--tile", "128", "--out", str(tmp_path / "tiles"), "-q"],
    }
    for name, args in runs.items():
        proc = _core_cli(core_site, *args)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        first = json.loads(proc.stdout.splitlines()[0])
        assert Path(first["package"]) == core_site / "napari_gradcam"  # the wheel's copy, not the checkout
        blocked = json.loads(proc.stdout.splitlines()[-1])["blocked"]
        assert "napari" not in blocked and "matplotlib" not in blocked, blocked  # neither needed nor missing
    assert (tmp_path / "h.tif").is_file() and (tmp_path / "h.png").is_file()
    assert (tmp_path / "tiles" / "overlay.png").is_file() and (tmp_path / "tiles" / "breakdown.json").is_file()


@pytest.mark.slow
def test_core_install_check_catches_an_undeclared_import(core_site):
    """The check itself: napari (an extra) is not importable in the core install, and ``demo`` says in
    one sentence how to get it."""
    proc = _core_cli(core_site, "demo", "--screenshot", "x.png")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "napari-gradcam: error: napari is not installed; install the plugin with it: pip install "
        "'napari-gradcam[napari]' (the other commands work without it)."]
