"""compare_methods: maps, deletion/insertion AUC and the model-randomisation check; the methods and compare commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam.cli import main
from napari_gradcam.compare import randomised_copy, rank_correlation
from napari_gradcam.errors import GradCamError
from napari_gradcam.localisation import deletion_insertion

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

FAST = ["cam", "gradcam", "ablationcam", "saliency", "integrated-gradients", "guided-backprop"]


@pytest.fixture(scope="module")
def image():
    from napari_gradcam.phantoms import make_xray

    return make_xray("pneumonia", size=40, seed=1).image


class _OneChannel(torch.nn.Module):
    """conv (1 filter) -> ReLU -> global average -> linear: every map's ranks ignore the head's weights."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 5, padding=2)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(1, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def test_rank_correlation_known_values():
    a = np.arange(400, dtype=float).reshape(20, 20)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, 3 * a ** 2 + 1) == pytest.approx(1.0)  # ranks only
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a - 200, -(a - 200), absolute=True) == pytest.approx(1.0)
    assert rank_correlation(a, np.zeros_like(a)) == 0.0  # all structure gone
    assert np.isnan(rank_correlation(np.ones_like(a), np.zeros_like(a)))
    big = np.random.default_rng(0).random((300, 500))
    assert rank_correlation(big, big[::-1]) < 0.2  # large maps are compared area-averaged, still as maps


def test_randomised_copy_changes_only_the_top_layers():
    torch.manual_seed(0)
    b = ng.build_model("resnet18", ["a", "b"], in_channels=1, input_size=32)
    with torch.no_grad():  # as if trained: BatchNorm away from its initial values
        for m in b.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    r, top = randomised_copy(b)
    again, top2 = randomised_copy(b)
    assert top == top2 and top[0] == "fc" and any(n.startswith("layer4") for n in top)
    assert not any(n.startswith(("layer1", "layer2", "conv1")) for n in top)
    for k, v in b.model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(v, before[k])
    rs, bs, as_ = r.model.state_dict(), b.model.state_dict(), again.model.state_dict()
    for k in bs:
        layer = k.rsplit(".", 1)[0]
        if layer in top and "num_batches" not in k:
            if k.endswith("weight") and rs[k].numel() > 8:
                assert not torch.equal(rs[k], bs[k]), k
        else:
            torch.testing.assert_close(rs[k], bs[k])
        torch.testing.assert_close(rs[k], as_[k])  # a fixed seed: the same copy every time


def test_map_that_ignores_the_model_is_flagged(image):
    torch.manual_seed(0)
    model = _OneChannel().eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-1.0], [2.0]]))  # class b: positive before and after re-initialising
    b = ng.wrap_model(model, ["a", "b"], input_size=32, in_channels=1)
    r = ng.compare_methods(b, image, methods=["saliency", "gradcam"], target="b", steps=4)
    assert r.settings["randomised_layers"] == ["fc"]
    for row in r.rows:  # one channel: the head only rescales the maps, so the ranks do not move
        assert row.randomisation_correlation == pytest.approx(1.0, abs=1e-3)  # up to rounding between near ties
        assert row.model_dependent is False
    assert sum("barely changes" in n for n in r.notes) == 2
    r = ng.compare_methods(b, image, methods=["saliency"], target="b", steps=4, sanity_threshold=1.01)
    assert r.rows[0].model_dependent is True and not r.notes


def test_compare_methods_matches_its_parts(tiny_bundle, image):
    r = ng.compare_methods(tiny_bundle, image, methods=FAST, steps=5)
    assert [row.method for row in r.rows] == FAST and all("barely" in n for n in r.notes)
    assert r.target_index == int(ng.predict(tiny_bundle, image).argmax())
    random_bundle, _ = randomised_copy(tiny_bundle)
    for row in r.rows:
        h = ng.explain(tiny_bundle, image, row.method, target=r.target_index)
        np.testing.assert_allclose(row.heatmap.data, h.data, atol=1e-6)
        curves = deletion_insertion(tiny_bundle, image, h.data, r.target_index, steps=5)
        assert row.deletion_auc == pytest.approx(curves["deletion_auc"], abs=1e-6)
        assert row.insertion_auc == pytest.approx(curves["insertion_auc"], abs=1e-6)
        other = ng.explain(random_bundle, image, row.method, target=r.target_index).data
        want = rank_correlation(h.data, other, absolute=row.signed)
        assert row.randomisation_correlation == pytest.approx(want, abs=1e-9, nan_ok=True)
        assert row.heatmap.signed == row.signed and row.seconds >= 0
    assert set(r.maps) == set(FAST)
    table = r.table()
    assert "Integrated Gradients" in table and "deletion AUC" in table
    assert r.table(markdown=True).splitlines()[3].startswith("| CAM |")


def test_default_methods_skip_slow_ones_and_unsupported(image):
    torch.manual_seed(0)
    b = ng.wrap_model(_OneChannel().eval(), ["a", "b"], input_size=32, in_channels=1)
    names = [row.method for row in ng.compare_methods(b, image, steps=2).rows]
    assert "scorecam" not in names and "occlusion" not in names and "gradcam" in names
    flat = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 2))
    fb = ng.wrap_model(flat.eval(), ["a", "b"], input_size=32, in_channels=1)
    r = ng.compare_methods(fb, image, methods=["cam", "gradcam"], steps=2, layer="1")
    assert [row.method for row in r.rows] == ["gradcam"] and r.notes[0].startswith("CAM was skipped")
    with pytest.raises(GradCamError, match="Unknown method"):
        ng.compare_methods(b, image, methods=["lime"])


def test_json(tiny_bundle, image, tmp_path):
    r = ng.compare_methods(tiny_bundle, image, methods=["gradcam", "integrated-gradients"], steps=3)
    data = json.loads(r.to_json(tmp_path / "c.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["gradcam", "integrated-gradients"]
    assert data["methods"][1]["signed"] is True and data["target"] == r.target
    assert data["methods"][0]["deletion_auc"] == pytest.approx(r.rows[0].deletion_auc)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cmp") / "m.safetensors"
    ng.save_model(ng.build_model("simple_cnn", ["normal", "pneumonia"], 1, 32), path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, image):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.uint8(np.clip(image, 0, 255))).save(path)
    return path


def test_cli_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in ng.list_methods():
        line = next(s for s in out.splitlines() if s.split()[0] == m["name"])
        assert m["family"] in line and m["description"] in line
    assert main(["methods", "--family", "attribution"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [m["name"] for m in ng.list_methods() if m["family"] == "attribution"] and "saliency" in listed
    assert main(["methods", "--family", "nope"]) == 2
    assert "families" in capsys.readouterr().err


def test_cli_compare_and_explain_any_method(model_file, image_file, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["compare", str(model_file), str(image_file), "--method", "gradcam", "saliency", "--json", str(out),
                 "--maps", str(tmp_path / "maps"), "--steps", "3", "--device", "cpu", "-q"])
    assert code == 0
    assert "Saliency" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [m["method"] for m in data["methods"]] == ["gradcam", "saliency"]
    assert (tmp_path / "maps" / "saliency.tif").is_file()
    for method in ("integrated-gradients", "ablationcam"):
        heat = tmp_path / f"{method}.tif"
        assert main(["explain", str(model_file), str(image_file), "--method", method, "--out", str(heat),
                     "--overlay", str(tmp_path / f"{method}.png"), "--device", "cpu"]) == 0
        import tifffile

        data = tifffile.imread(heat)
        assert data.shape == (40, 40) and (data.min() < 0) == (method == "integrated-gradients")
    capsys.readouterr()
    assert main(["compare", str(model_file), str(image_file), "--method", "lime", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown method" in err[0]
