"""The package imports light, declares its npe2 manifest and its console script."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import pytest


def test_import_loads_neither_torch_nor_napari():
    code = (
        "import sys, napari_gradcam as ng\n"
        "heavy = [m for m in ('torch', 'torchvision', 'napari', 'qtpy', 'PyQt6', 'skimage') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert ng.__version__\n"
        "assert 'build_model' in dir(ng)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_lazy_public_names_resolve():
    import napari_gradcam as ng

    for name in ("build_model", "save_model", "load_model", "predict", "list_architectures",
                 "GradCamError", "ModelFileError", "ImageError", "resolve_device"):
        assert getattr(ng, name) is not None
    with pytest.raises(AttributeError):
        ng.no_such_name  # noqa: B018


def test_version_matches_distribution():
    import napari_gradcam as ng

    assert metadata.version("napari-gradcam") == ng.__version__


def test_npe2_manifest_found_and_valid():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-gradcam")
    assert manifest.name == "napari-gradcam"
    assert manifest.display_name
    manifest.validate_imports()  # every python_name imports and resolves
    commands = {c.id for c in manifest.contributions.commands}
    assert commands, "the manifest contributes no commands"
    for sample in manifest.contributions.sample_data or []:
        assert sample.command in commands
    # packaged next to the code, as the entry point says
    packaged = resources.files("napari_gradcam") / "napari.yaml"
    assert packaged.is_file()
    assert npe2.PluginManifest.from_file(str(packaged)).name == "napari-gradcam"


def test_npe2_cli_validates():
    exe = Path(sys.executable).parent / "npe2"
    if not exe.exists():
        pytest.skip("npe2 command-line tool not installed next to this Python")
    r = subprocess.run([str(exe), "validate", "napari-gradcam"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in r.stdout.lower() and "invalid" not in r.stdout.lower(), r.stdout


def test_manifest_entry_point_declared():
    eps = metadata.entry_points(group="napari.manifest")
    ours = [ep for ep in eps if ep.name == "napari-gradcam"]
    assert len(ours) == 1
    assert ours[0].value == "napari_gradcam:napari.yaml"


def test_console_script_declared():
    eps = metadata.entry_points(group="console_scripts")
    ours = [ep for ep in eps if ep.name == "napari-gradcam"]
    assert len(ours) == 1, "console script napari-gradcam is not declared"
    module, _, attr = ours[0].value.partition(":")
    assert module.startswith("napari_gradcam") and attr


_SUBMODULES = ("pipeline", "features", "tiling", "methods.gradient", "methods.gradient.family", "methods.cam", "hooks",
               "layer_choice", "smooth", "methods", "methods.registry", "methods.perturbation", "result", "shifts")


@pytest.mark.parametrize("order", ["call_first", "import_first"])
def test_engine_submodules_import_in_any_order(order):
    """``ng.explain`` is a plain function and every engine submodule imports before or after calling it."""
    imports = "".join(f"import napari_gradcam.engine.{m}\n" for m in _SUBMODULES)
    call = (
        "b = ng.build_model('simple_cnn', ['a', 'b'], in_channels=1, input_size=32)\n"
        "img = np.random.default_rng(0).random((40, 40)).astype(np.float32)\n"
        "h = ng.explain(b, img, 'gradcam', target='a')\n"
    )
    code = (
        "import types, numpy as np\n"
        "import napari_gradcam as ng\n"
        + (call + imports if order == "call_first" else imports + call)
        + "import napari_gradcam.engine as eng\n"
        "from napari_gradcam.engine import tiling\n"
        "assert isinstance(eng, types.ModuleType) and isinstance(tiling, types.ModuleType)\n"
        "assert isinstance(ng.explain, types.FunctionType), type(ng.explain)\n"
        "ref = napari_gradcam.engine.pipeline.explain(b, img, 'gradcam', target='a')\n"
        "assert np.array_equal(h.data, ref.data) and h.data.shape == (40, 40)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
