"""How an audit runs: on clean data no insertion shortcut is called; an interrupted audit resumes to the
same outputs; the folder form of ``explain`` matches ``ng.explain``; the event stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_gradcam as ng
from audit_phantoms import train_cli, write_clean
from napari_gradcam.audit import Audit, audit, iter_audit


@pytest.fixture(scope="module")
def clean(tmp_path_factory, torch_one_thread_module):
    root = tmp_path_factory.mktemp("clean")
    data = write_clean(root / "data", n_per_class=90)
    model = train_cli(data, root / "m.safetensors", epochs=10)
    return data, ng.load_model(model)


def test_no_insertion_shortcut_on_clean_data(clean, tmp_path):
    """The lesion class's strategies (a lesion in the left or the right lung) are tested even over large
    boxes: removing the region changes predictions (the lesion is there), but inserting what its members
    share into clear films does not (a lesion at another place in each film is not shared)."""
    from napari_gradcam.audit import ConfirmSettings
    from napari_gradcam.audit.confirm import beyond_control

    data, b = clean
    a = audit(b, data, out=tmp_path / "a", confirm_settings=ConfirmSettings(max_box=0.6))
    assert (a.table["status"] == "ok").all()
    tested = [c for c in a.clusters if c["insertion"] is not None]
    assert len(tested) >= 1
    for c in tested:
        i = c["insertion"]
        assert not beyond_control(i["moved"], i["n"], i["control"]["moved"], i["control"]["n"])[0], c["reason"]
        assert not c["reason"].startswith(("insertion", "removal and insertion")), c["reason"]


def test_resume_after_interruption_gives_the_same_outputs(clean, tmp_path):
    data, b = clean
    whole = audit(b, data, out=tmp_path / "whole", batch_size=16)
    gen = iter_audit(b, data, out=tmp_path / "cut", batch_size=16)
    explained = 0
    for ev in gen:
        if ev.kind == "explain" and ev.done > 0:
            explained += 1
            if explained == 3:  # stop after three batches, as Ctrl-C would
                gen.close()
                break
    assert not (tmp_path / "cut").exists() and (tmp_path / ".cut.partial" / "maps.zarr").is_dir()
    import zarr

    state = zarr.open_group(str(tmp_path / ".cut.partial" / "maps.zarr"), mode="r")["state"][:]
    assert (state > 0).sum() == 48
    with pytest.raises(ng.OutputError, match="interrupted audit"):  # not silently started again
        audit(b, data, out=tmp_path / "cut", batch_size=16)
    events = list(_events(iter_audit(b, data, out=tmp_path / "cut", batch_size=16, resume=True)))
    first = next(e for e in events if e.kind == "explain")
    assert first.done == 48  # the resumed run starts where the first stopped
    assert (tmp_path / "cut" / "images.csv").read_text() == (tmp_path / "whole" / "images.csv").read_text()
    assert json.loads((tmp_path / "cut" / "findings.json").read_text()) == \
        json.loads((tmp_path / "whole" / "findings.json").read_text())
    assert not (tmp_path / ".cut.partial").exists()
    np.testing.assert_array_equal(Audit.load(tmp_path / "cut").maps("grid"), whole.maps("grid"))


def _events(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_resume_refuses_another_model(clean, tmp_path):
    data, b = clean
    gen = iter_audit(b, data, out=tmp_path / "x", batch_size=16)
    for ev in gen:
        if ev.kind == "explain" and ev.done > 0:
            gen.close()
            break
    other = ng.build_model("simple_cnn", classes=b.classes, in_channels=1, input_size=b.config.input_size)
    with pytest.raises(ng.GradCamError, match="another model"):
        audit(other, data, out=tmp_path / "x", resume=True)


def test_events_and_arrays_source(clean):
    data, b = clean
    from napari_gradcam.data import read_image

    files = sorted((data / "lesion").glob("*.png"))[:20] + sorted((data / "clear").glob("*.png"))[:20]
    images = [read_image(p) for p in files]
    kinds = []
    gen = iter_audit(b, images, labels=["lesion"] * 20 + ["clear"] * 20, batch_size=8, confirm=False)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            a = stop.value
            break
        kinds.append(ev.kind)
        assert 0 <= ev.progress <= 1
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("explain") == 1 + 5
    assert list(a.table["path"][:2]) == ["array:0", "array:1"]
    np.testing.assert_allclose(a.table[["p_clear", "p_lesion"]].to_numpy(), ng.predict(b, images), atol=1e-5)
    assert a.table["label"].iloc[0] == "lesion"


def test_explain_folder_matches_explain(clean, tmp_path):
    import tifffile

    from napari_gradcam.cli import main
    from napari_gradcam.data import read_image

    data, b = clean
    model = tmp_path / "m.safetensors"
    ng.save_model(b, model)
    assert main(["explain", str(model), str(data), "--out", str(tmp_path / "heat")]) == 0
    files = sorted((tmp_path / "heat").rglob("*.tif"))
    assert len(files) == 180 and (tmp_path / "heat" / "clear" / "clear_0000.tif").is_file()
    for f in files[::45]:
        rel = f.relative_to(tmp_path / "heat").with_suffix(".png")
        img = read_image(data / rel)
        ref = ng.explain(b, img, method="gradcam")
        heat = tifffile.imread(f)
        assert heat.shape == img.shape[:2]
        np.testing.assert_allclose(heat, ref.data, atol=1e-4)


def test_explain_folder_refuses_single_image_options(clean, tmp_path, capsys):
    from napari_gradcam.cli import main

    data, b = clean
    model = tmp_path / "m.safetensors"
    ng.save_model(b, model)
    assert main(["explain", str(model), str(data), "--out", str(tmp_path / "h"), "--target", "lesion"]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["explain", str(model), str(data), "--out", str(tmp_path / "h"), "--method",
                 "integrated-gradients"]) == 2
    assert "keeps its sign" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
