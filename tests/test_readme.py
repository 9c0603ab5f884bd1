"""The README runs: every ```python block top to bottom, and every command of its ```bash blocks, against
shipped files (the demo model) and sample images written here.  A README example that breaks fails here.

The Python block's placeholders (``image``, ``big_image``, ``dask_or_zarr_image``, ``my_module``, ``viewer``)
are defined in :func:`_placeholders` from the sample data; the commands that are not run are listed, with
the reason, in :data:`NOT_RUN` (set-up and test scripts, installs, ``demo`` without a screen).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision  # noqa: F401 - before any viewer (see _napari/_compat.py)

README = Path(__file__).resolve().parents[1] / "README.md"

#: Commands of the README's bash blocks that this test does not run, and why (exact text, comments removed).
NOT_RUN = {
    'pip install "napari-gradcam[napari]"': "installs packages",
    "pip install napari-gradcam": "installs packages",
    'pip install "napari-gradcam[timm]"': "installs packages",
    'pip install "napari-gradcam[onnx-export]"': "installs packages",
    'pip install -e ".[testing]"': "installs packages",
    "bash scripts/setup.sh && .venv/bin/napari-gradcam demo": "machine set-up, then a window on a screen",
    "bash scripts/setup.sh && xvfb-run -a .venv/bin/napari-gradcam demo --screenshot demo.png": "machine set-up",
    "bash scripts/test.sh": "runs the whole test suite",
    # a shortcut to remove needs a model that learned one: tests/test_unlearn_planted.py and
    # tests/test_audit_planted.py run these three lines on a planted marker
    "napari-gradcam unlearn model.safetensors audit_dir:3 --out model_pclarc.safetensors": "needs a found shortcut",
    "napari-gradcam train data/ --out model_aclarc.safetensors --unlearn audit_dir:3": "needs a found shortcut",
    "napari-gradcam audit model_pclarc.safetensors data/ --out audit_after --compare audit_dir:3": "needs a found shortcut",
}

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _commands() -> list[str]:
    """Each command line of the bash blocks, without comments (a line that is only a comment is none)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            code = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if code:
                commands.append(code)
    return commands


def test_the_readme_has_examples_and_every_one_is_run_or_listed():
    assert len(_blocks("python")) >= 2 and len(_commands()) >= 15
    for command in _commands():
        assert command in NOT_RUN or command.startswith("napari-gradcam "), f"an example nobody runs: {command}"
    assert set(NOT_RUN) <= set(_commands()), "NOT_RUN names a command the README no longer has"


# ----------------------------------------------------------------------------- the Python blocks
def _placeholders(viewer) -> dict:
    """The names the README's Python block uses without defining them."""
    import dask.array as da
    import torch

    from napari_gradcam.phantoms import make_mosaic, make_xray

    class MyModule(torch.nn.Module):  # a user's own network: 3 channels, two classes
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                                torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    torch.manual_seed(0)
    mosaic = make_mosaic((1536, 1536), tile=512, seed=1)[0]
    return {
        "image": make_xray("pneumonia", size=128, seed=3).image,
        "big_image": make_mosaic((512, 512), tile=128, seed=2)[0],
        "dask_or_zarr_image": da.from_array(mosaic, chunks=1024),
        "my_module": MyModule(),
        "viewer": viewer,
    }


def _write_folder() -> None:
    """xr/ in the working folder: the data set the README's audit lines read."""
    from napari_gradcam.phantoms import write_dataset

    write_dataset(Path("xr"), n_per_class=4, size=128, seed=5)


def test_the_python_blocks_run_top_to_bottom(make_napari_viewer, tmp_path, monkeypatch):
    pytest.importorskip("napari")
    pytest.importorskip("onnxscript")  # the README's second ONNX exporter (the onnx-export extra)
    monkeypatch.chdir(tmp_path)
    namespace = _placeholders(make_napari_viewer())
    _write_folder()
    for k, block in enumerate(_blocks("python")):
        exec(compile(block, f"README.md python block {k + 1}", "exec"), namespace)  # noqa: S102 - our own README
    b, image = namespace["b"], namespace["image"]
    assert namespace["p"].shape == (len(b.classes),) and np.isclose(namespace["p"].sum(), 1, atol=1e-5)
    assert namespace["h"].data.shape == image.shape
    assert namespace["t"].heatmaps.shape[1:] == (1536, 1536) and Path("maps.zarr").exists()
    assert namespace["f"].maps.shape[0] <= 36
    # the ONNX recipe: both exporters wrote one self-contained file that loads as the same model
    assert Path("demo.onnx").is_file() and Path("demo2.onnx").is_file() and not Path("demo2.onnx.data").exists()
    assert np.abs(ng_predict(namespace, "o") - ng_predict(namespace, "b")).max() < 1e-4


def ng_predict(namespace: dict, name: str) -> np.ndarray:
    return namespace["ng"].predict(namespace[name], namespace["image"])


# ----------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    """The files the README's commands name: m.safetensors (the shipped demo model), scan.png, slide.tif,
    xr/ with xr_masks/ (images and lesion masks), xr_other/ (another set); the audit folder xr_audit/ is
    written by the README's own audit command, which comes before the commands that read it."""
    import tifffile
    from PIL import Image

    from napari_gradcam.data import demo_model_path
    from napari_gradcam.phantoms import make_mosaic, make_xray, write_dataset

    root = tmp_path_factory.mktemp("readme")
    shutil.copy(demo_model_path(), root / "m.safetensors")
    Image.fromarray(make_xray("pneumonia", size=128, seed=3).image).save(root / "scan.png")
    tifffile.imwrite(root / "slide.tif", make_mosaic((384, 384), tile=128, seed=4)[0])
    write_dataset(root / "xr", n_per_class=4, size=128, seed=5, mask_dir=root / "xr_masks")
    write_dataset(root / "xr_other", n_per_class=4, size=128, seed=6)
    return root


@pytest.mark.parametrize("command", [c for c in _commands() if c not in NOT_RUN])
def test_each_command_example_runs(command, example_files, monkeypatch, capsys):
    from napari_gradcam.cli import main

    monkeypatch.chdir(example_files)
    argv = shlex.split(command)
    assert argv[0] == "napari-gradcam"
    code = main(argv[1:])
    err = capsys.readouterr().err
    assert code == 0, f"{command}\n{err}"
