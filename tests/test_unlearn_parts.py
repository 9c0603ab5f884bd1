"""Unlearning's parts on tiny untrained networks: the stored projection (math, hooks on every path, files that
round-trip and tampered files that never run code), audit folders, the artifact paste, the two-proportion
interval, recheck with an injected tester, and the CLI's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_gradcam as ng
from napari_gradcam.bundle.projection import Projection, attach, grid_box
from napari_gradcam.errors import GradCamError, ModelFileError

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.manual_seed(0)
    return ng.build_model("simple_cnn", ["clear", "lesion"], in_channels=1, input_size=32)


def _images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def _projection(bundle, region=None, seed=1):
    from napari_gradcam import models

    c = models.get_module(bundle.model, bundle.target_layer)
    n = [m for m in c.modules() if hasattr(m, "out_channels")][-1].out_channels
    rng = np.random.default_rng(seed)
    return Projection(bundle.target_layer, rng.standard_normal(n), rng.standard_normal(n), {"method": "test"}, region)


def _copy(bundle):
    from napari_gradcam.unlearn.pclarc import _copy

    return _copy(bundle)


# ----------------------------------------------------------------------------- the projection
def test_projection_sets_the_component_along_v_to_the_reference_and_keeps_the_rest():
    import torch

    p = Projection("x", torch.tensor([3.0, 4.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(p.vector, torch.tensor([0.6, 0.8, 0.0]))  # stored unit-norm
    h = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    out = p.apply(h)
    v, z = p.vector.view(1, 3, 1, 1), p.reference.view(1, 3, 1, 1)
    assert torch.allclose((out * v).sum(1), (z * v).sum(1).expand(2, 5, 5), atol=1e-6)  # v^T h' = v^T z
    orth = torch.tensor([-0.8, 0.6, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose((out * orth).sum(1), (h * orth).sum(1), atol=1e-6)  # the rest untouched
    assert torch.allclose(out[:, 2], h[:, 2])
    assert torch.allclose(p.apply(out), out, atol=1e-6)  # idempotent


def test_projection_with_a_region_touches_only_its_cells():
    import torch

    p = Projection("x", torch.tensor([1.0, 0.0]), torch.zeros(2), region=[0.0, 0.0, 0.25, 0.5], margin=0)
    h = torch.ones(1, 2, 8, 8)
    out = p.apply(h)
    assert grid_box([0.0, 0.0, 0.25, 0.5], 8, 8) == (0, 0, 2, 4)
    assert torch.equal(out[0, 0, :2, :4], torch.zeros(2, 4)) and out[0, 0].sum() == 64 - 8
    assert torch.equal(out[0, 1], h[0, 1])
    wide = Projection("x", torch.tensor([1.0, 0.0]), torch.zeros(2), region=[0.0, 0.0, 0.25, 0.5], margin=1)
    assert wide.apply(h)[0, 0].sum() == 64 - 15  # (3 x 5) cells


@pytest.mark.parametrize("bad", [dict(vector=[0.0, 0.0]), dict(vector=[1.0, np.nan]), dict(reference=[1.0]),
                                 dict(region=[0.5, 0.0, 0.2, 1.0]), dict(region="top"), dict(margin=-1)])
def test_impossible_projections_are_one_sentence(bad):
    kw = {"layer": "x", "vector": [1.0, 0.0], "reference": [0.0, 0.0], **bad}
    with pytest.raises(GradCamError):
        Projection(**kw)


def test_the_bundle_applies_its_projection_on_predict_and_explain(tiny):
    import torch

    from napari_gradcam import models

    new = attach(_copy(tiny), [_projection(tiny)])
    imgs = _images()
    p0, p1 = ng.predict(tiny, imgs), ng.predict(new, imgs)
    assert not np.allclose(p0, p1, atol=1e-4)  # the projection changes the outputs ...
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # ... exactly as projecting the layer's output by hand does
        feats = models.get_module(tiny.model, tiny.target_layer)
        h = feats.register_forward_hook(lambda m, i, o: new.projections[0].apply(o))
        expected = tiny.model(x)
        h.remove()
        assert torch.allclose(new.model(x), expected, atol=1e-5)
    assert np.allclose(ng.predict(tiny, imgs), p0)  # the original is untouched
    m0 = ng.explain(tiny, imgs[0], method="gradcam").data
    m1 = ng.explain(new, imgs[0], method="gradcam").data
    assert m0.shape == m1.shape and not np.allclose(m0, m1, atol=1e-4)


def test_a_deep_copy_gets_its_own_hooks(tiny):
    import copy

    new = attach(_copy(tiny), [_projection(tiny)])
    before = ng.predict(new, _images())
    twin = attach(_copy(new), [])  # re-installing on a copy must not remove the original's hooks
    assert np.allclose(ng.predict(new, _images()), before)
    assert np.allclose(ng.predict(twin, _images()), ng.predict(tiny, _images()), atol=1e-6)
    assert np.allclose(ng.predict(ng.ModelBundle(copy.deepcopy(new.model), new.config), _images()), before)


def test_save_and_load_round_trip_keeps_the_projection(tiny, tmp_path):
    from safetensors import safe_open

    new = attach(_copy(tiny), [_projection(tiny, region=[0.0, 0.0, 0.3, 0.3]), _projection(tiny, seed=2)])
    path = ng.save_model(new, tmp_path / "p.safetensors")
    back = ng.load_model(path, device="cpu")
    assert [p.layer for p in back.projections] == [tiny.target_layer] * 2
    assert back.projections[0].region == [0.0, 0.0, 0.3, 0.3] and back.projections[1].region is None
    assert back.projections[0].info == {"method": "test"}
    assert np.allclose(ng.predict(back, _images()), ng.predict(new, _images()), atol=1e-6)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "3" and json.loads(meta["projections"])[0]["layer"] == tiny.target_layer
    plain = ng.load_model(ng.save_model(tiny, tmp_path / "plain.safetensors"), device="cpu")
    assert plain.projections == [] and np.allclose(ng.predict(plain, _images()), ng.predict(tiny, _images()),
                                                   atol=1e-6)


def _rewrite(path, out, tensors=None, **meta):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    t = load_file(str(path))
    t.update(tensors or {})
    t = {k: v for k, v in t.items() if v is not None}
    metadata.update({k: v for k, v in meta.items() if v is not None})
    for k in [k for k, v in meta.items() if v is None]:
        metadata.pop(k, None)
    save_file(t, str(out), metadata=metadata)
    return out


@pytest.mark.parametrize("case", ["layer", "json", "length", "missing", "extra", "region", "code"])
def test_tampered_projections_are_refused_and_never_run(tiny, tmp_path, case):
    import torch

    path = ng.save_model(attach(_copy(tiny), [_projection(tiny)]), tmp_path / "p.safetensors")
    entry = [{"layer": tiny.target_layer, "region": None, "margin": 1, "info": {}}]
    marker = tmp_path / "ran"
    change = {
        "layer": dict(projections=json.dumps([{**entry[0], "layer": "no.such.layer"}])),
        "json": dict(projections="[{not json"),
        "length": dict(tensors={"__projection__.0.vector": torch.ones(3), "__projection__.0.reference": torch.ones(3)}),
        "missing": dict(tensors={"__projection__.0.reference": None}),
        "extra": dict(tensors={"__projection__.7.vector": torch.ones(3)}),
        "region": dict(projections=json.dumps([{**entry[0], "region": [0.9, 0, 0.1, 1]}])),
        "code": dict(projections=json.dumps([{**entry[0], "layer": f"__import__('pathlib').Path('{marker}').touch()",
                                              "info": {"__reduce__": "os.system"}}])),
    }[case]
    bad = _rewrite(path, tmp_path / "bad.safetensors", change.get("tensors"),
                   **{k: v for k, v in change.items() if k != "tensors"})
    with pytest.raises(ModelFileError) as e:
        ng.load_model(bad, device="cpu")
    assert "\n" not in str(e.value) and "bad.safetensors" in str(e.value)
    assert not marker.exists()


def test_a_description_without_tensors_and_tensors_without_description_are_refused(tiny, tmp_path):
    path = ng.save_model(attach(_copy(tiny), [_projection(tiny)]), tmp_path / "p.safetensors")
    with pytest.raises(ModelFileError, match="without their description"):
        ng.load_model(_rewrite(path, tmp_path / "a.safetensors", projections=None), device="cpu")


# ----------------------------------------------------------------------------- audits, paste, interval
def _audit(tmp_path, layer="features", clusters=None, rows=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        p = tmp_path / f"im{i}.png"
        img = rng.integers(0, 200, (40, 40), dtype=np.uint8)
        if i < 3:
            img[4:12, 4:12] = 255  # the members' artifact
        Image.fromarray(img).save(p)
        paths.append(str(p))
    labels = ["lesion"] * 5 + ["clear"] * 3
    rows = rows or [[p, lab, lab, 0.5, 0.5, 3 if i < 3 else 0, 0, 0, "", "ok"] for i, (p, lab) in
                    enumerate(zip(paths, labels))]
    import csv

    d = tmp_path / "audit"
    d.mkdir(exist_ok=True)
    with open(d / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "p_clear", "p_lesion", "cluster", "atypical", "frame_share",
                    "outside_mask_share", "status"])
        w.writerows(rows)
    clusters = clusters if clusters is not None else [
        {"id": 3, "class": "lesion", "class_index": 1, "size": 3, "members": paths[:3], "box": [0.1, 0.1, 0.3, 0.3],
         "removal": {}, "insertion": {"moved": 5, "n": 10, "rate": 0.5, "control": {"moved": 0, "n": 10}},
         "verdict": "likely shortcut", "reason": ""},
        {"id": 0, "class": "lesion", "class_index": 1, "size": 2, "members": paths[3:5], "box": [0.3, 0.3, 0.7, 0.7],
         "verdict": "no evidence", "reason": ""}]
    (d / "findings.json").write_text(json.dumps({"version": 1, "model": "m", "method": "gradcam", "layer": layer,
                                                  "classes": ["clear", "lesion"], "source": "", "class_stats": {},
                                                  "clusters": clusters, "skipped": []}))
    return d, paths


def test_read_audit_picks_the_shortcuts_or_the_named_cluster(tmp_path):
    from napari_gradcam.unlearn.findings import parse_target, read_audit

    d, paths = _audit(tmp_path)
    a = read_audit(d)
    assert [f.id for f in a.findings] == [3] and a.layer == "features"
    f = a.findings[0]
    assert f.members == paths[:3] and f.others == paths[3:5] and f.rest == paths[5:]
    assert [f.id for f in read_audit(f"{d}:0").findings] == [0]
    assert [f.id for f in read_audit(d, cluster=0).findings] == [0]
    assert parse_target(f"{d}:12") == (d, 12) and parse_target(str(d)) == (d, None)
    assert a.record("x")["clusters"] == [3] and a.record("x")["boxes"] == [[0.1, 0.1, 0.3, 0.3]]


@pytest.mark.parametrize("problem, match", [("no folder", "not an audit folder"), ("unknown id", "no cluster 9"),
                                            ("no shortcut", "calls no cluster"), ("bad box", "impossible box"),
                                            ("damaged", "damaged")])
def test_audit_problems_are_one_sentence(tmp_path, problem, match):
    from napari_gradcam.unlearn.findings import read_audit

    d, paths = _audit(tmp_path)
    target = str(d)
    if problem == "no folder":
        target = str(tmp_path / "nowhere")
    elif problem == "unknown id":
        target = f"{d}:9"
    elif problem == "no shortcut":
        _audit(tmp_path, clusters=[{"id": 1, "class": "lesion", "box": [0, 0, 1, 1], "members": paths[:2],
                                    "verdict": "no evidence"}])
    elif problem == "bad box":
        _audit(tmp_path, clusters=[{"id": 1, "class": "lesion", "box": [0.5, 0, 0.2, 1], "members": paths[:2],
                                    "verdict": "likely shortcut"}])
    else:
        (d / "findings.json").write_text("{")
    with pytest.raises(GradCamError, match=match) as e:
        read_audit(target)
    assert "\n" not in str(e.value)


def test_class_rates_give_every_class_the_same_share_of_artifact_images():
    from napari_gradcam.unlearn.aclarc import class_rates

    r = class_rates(0.5, 0.7, 1, 3)
    assert np.allclose(r, [0.7, 0.0, 0.7])
    r = class_rates(0.5, 0.2, 0, 2)
    share_own = 0.2 + 0.8 * r[0]
    assert np.isclose(share_own, 0.5) and np.isclose(r[1], 0.5)


def test_the_paste_writes_members_patches_at_the_box_with_jitter(tmp_path):
    import torch

    from napari_gradcam.unlearn.aclarc import build_paste

    d, _ = _audit(tmp_path)
    paste = build_paste(d, 1, 40, p=1.0, classes=["clear", "lesion"])
    (stack, (y0, x0)), = paste.patches
    assert stack.shape == (3, 1, 8, 8) and (y0, x0) == (4, 4) and paste.jitter == 1
    assert torch.all(stack[:, :, 0:8, 0:8] == 1.0)  # the members' bright square (4..12 px) at the box
    x = torch.zeros(6, 1, 40, 40)
    out = paste(x, torch.Generator().manual_seed(0), labels=torch.tensor([0, 0, 0, 1, 1, 1]))
    # p = 1 and the cluster holds 3 of the 5 lesion images: every clear image, (1 - 0.6) / 0.4 = all lesion ones
    assert all(float(out[i].sum()) == 64.0 for i in range(6))
    for i in range(6):
        ys, xs = torch.nonzero(out[i, 0], as_tuple=True)
        assert 3 <= int(ys.min()) <= 5 and 3 <= int(xs.min()) <= 5
    assert torch.equal(x, torch.zeros(6, 1, 40, 40))  # the input batch is not changed in place
    rec = paste.record
    assert rec["method"] == "a-clarc" and rec["clusters"] == [3] and rec["boxes"] == [[0.1, 0.1, 0.3, 0.3]]


def test_newcombe_interval_matches_the_published_examples():
    from napari_gradcam.unlearn.proof import difference_interval

    # Newcombe (Statistics in Medicine 1998), Table II, method 10
    for (k1, n1, k2, n2), (lo, hi) in {(56, 70, 48, 80): (0.0524, 0.3339), (9, 10, 3, 10): (0.1705, 0.8090),
                                       (5, 56, 0, 29): (-0.0381, 0.1926)}.items():
        d = difference_interval(k1, n1, k2, n2)
        assert d["low"] == pytest.approx(lo, abs=6e-4) and d["high"] == pytest.approx(hi, abs=6e-4)


class _FixedTester:
    def __init__(self, moved, control):
        self.moved, self.control, self.calls = moved, control, []

    def removal_test(self, bundle, images, box, class_index, **kw):
        self.calls.append(("removal", len(images), box, class_index))
        return {"changed": 0, "n": len(images), "rate": 0.0, "drop": 0.0, "control": {"changed": 0,
                                                                                   "n": len(images)}}

    def insertion_test(self, bundle, donors, recipients, box, class_index, **kw):
        self.calls.append(("insertion", len(donors), len(recipients), class_index))
        return {"moved": self.moved, "n": 100, "rate": self.moved / 100,
                "control": {"moved": self.control, "n": 100, "rate": self.control / 100}}


@pytest.mark.parametrize("moved, control, gone", [(3, 1, True), (30, 1, False), (8, 2, True), (12, 2, False)])
def test_recheck_calls_a_finding_gone_when_insertion_is_within_its_controls_interval(tiny, tmp_path, moved, control,
                                                                                      gone):
    from napari_gradcam.unlearn import recheck

    d, _ = _audit(tmp_path)
    tester = _FixedTester(moved, control)
    r = recheck(tiny, d, tester=tester)
    (f,) = r["findings"]
    assert f["gone"] is gone and r["all_gone"] is gone and f["id"] == 3 and f["class"] == "lesion"
    assert tester.calls == [("removal", 3, [0.1, 0.1, 0.3, 0.3], 1), ("insertion", 3, 3, 1)]
    assert f["before"]["insertion"]["moved"] == 5 and f["after"]["insertion"]["moved"] == moved
    assert ("gone" in f["reason"]) is gone


def test_recheck_without_the_audit_package_says_so(tiny, tmp_path, monkeypatch):
    import importlib

    from napari_gradcam.unlearn import recheck

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "napari_gradcam.audit.confirm":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    d, _ = _audit(tmp_path)
    with pytest.raises(GradCamError, match="counterfactual tests"):
        recheck(tiny, d)


# ----------------------------------------------------------------------------- P-ClArC and the CLI on a tiny net
def test_unlearn_returns_a_new_bundle_with_one_projection_per_finding(tiny, tmp_path):
    d, _ = _audit(tmp_path)
    new = ng.unlearn(tiny, d)
    assert new is not tiny and new.model is not tiny.model and tiny.projections == []
    (p,) = new.projections
    assert p.layer == "features" and p.region == [0.1, 0.1, 0.3, 0.3] and p.info["method"] == "p-clarc"
    assert p.info["clusters"] == [3] and p.info["n_members"] == 3 and p.info["n_others"] == 2
    both = ng.unlearn(tiny, f"{d}:3", everywhere=True)
    assert both.projections[0].region is None
    with pytest.raises(GradCamError, match="classes"):
        ng.unlearn(ng.build_model("simple_cnn", ["a", "b"], in_channels=1, input_size=32), d)


def test_cli_unlearn_writes_a_model_and_refuses_bad_input(tiny, tmp_path, capsys):
    from napari_gradcam.cli import main

    d, _ = _audit(tmp_path)
    m = ng.save_model(tiny, tmp_path / "m.safetensors")
    out = tmp_path / "m2.safetensors"
    assert main(["unlearn", str(m), f"{d}:3", "--out", str(out), "-q", "--device", "cpu"]) == 0
    assert ng.load_model(out, device="cpu").projections[0].info["clusters"] == [3]
    capsys.readouterr()
    assert main(["unlearn", str(m), f"{d}:9", "--out", str(tmp_path / "x.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no cluster 9" in err and err.count("\n") == 1
    assert main(["unlearn", str(m), str(d), "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2


def test_train_config_checks_the_unlearn_options(tmp_path):
    from napari_gradcam.train import TrainConfig

    for p in (0.0, 1.5, float("nan")):
        with pytest.raises(GradCamError):
            TrainConfig(data_dir=str(tmp_path), out=str(tmp_path / "m.safetensors"), unlearn_p=p).validate()
    from napari_gradcam.cli import build_parser

    args = build_parser().parse_args(["train", "data", "--out", "m.safetensors", "--unlearn", "a:3",
                                      "--unlearn-p", "0.3"])
    assert args.unlearn == "a:3" and args.unlearn_p == 0.3
