"""``evaluate`` and ``localize`` with intervals, patients, subgroups and an external set, end to end on tiny models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_gradcam.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Two classes, 16 images each; file names carry a patient (two images per patient)."""
    from napari_gradcam.phantoms import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("stats") / "data", n_per_class=16, size=40, seed=5,
                         classes=("normal", "pneumonia"))
    for f in sorted(root.glob("*/*.png")):
        i = int(f.stem.split("_")[-1])
        f.rename(f.with_name(f"person{1000 * (f.parent.name == 'normal') + i // 2}_{f.name}"))
    return root


@pytest.fixture(scope="module")
def model(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats_model") / "m.safetensors"
    assert main(["train", str(phantoms), "--out", str(out), "--image-size", "32", "--epochs", "2",
                 "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def external(phantoms, tmp_path_factory):
    """Another kind of phantom: the same classes from another seed, darker and with a bright frame."""
    from PIL import Image

    from napari_gradcam.phantoms import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("ext") / "data", n_per_class=10, size=40, seed=31,
                         classes=("normal", "pneumonia"))
    for f in root.glob("*/*.png"):
        a = np.asarray(Image.open(f)).astype(np.float32) * 0.6
        a[:3], a[-3:] = 255, 255
        Image.fromarray(a.astype(np.uint8)).save(f)
    return root


def _within(r, key, cls=None):
    v, ci = (r[key], r[f"{key}_ci"]) if cls is None else (r[key][cls], r[f"{key}_ci"][cls])
    return ci is not None and ci[0] - 1e-12 <= v <= ci[1] + 1e-12


def test_evaluate_reports_intervals_by_patient(model, phantoms, tmp_path, capsys):
    rep, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["evaluate", str(model), str(phantoms), "--json", str(rep), "--plot", str(png),
                 "--bootstrap", "300", "--seed", "4", "-q"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "[95 % bootstrap intervals: 300 resamples of 16 patients, seed 4]" in out
    r = json.loads(rep.read_text())
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "confusion_matrix"):
        assert key in r  # the old keys stay
    assert _within(r, "accuracy") and _within(r, "balanced_accuracy") and _within(r, "roc_auc")
    for c in ("normal", "pneumonia"):
        assert _within(r, "sensitivity", c) and _within(r, "specificity", c)
    assert r["bootstrap"]["unit"] == "patient" and r["bootstrap"]["units"] == 16 and r["bootstrap"]["resamples"] == 300
    assert png.read_bytes()[:4] == b"\x89PNG"
    # by image instead: 32 units; no intervals with --bootstrap 0
    assert main(["evaluate", str(model), str(phantoms), "--json", str(rep), "--group-pattern", "none",
                 "--bootstrap", "300", "--seed", "4", "-q"]) == 0
    assert json.loads(rep.read_text())["bootstrap"]["units"] == 32
    assert main(["evaluate", str(model), str(phantoms), "--json", str(rep), "--bootstrap", "0", "-q"]) == 0
    assert not any(k.endswith("_ci") for k in json.loads(rep.read_text()))


def test_evaluate_patients_from_a_manifest(model, phantoms, tmp_path, capsys):
    table = tmp_path / "patients.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "view", "patient"])
        for p in sorted(phantoms.glob("*/*.png")):
            w.writerow([p.name, "PA", "everyone-" + p.parent.name[:1] + str(len(p.name) % 3)])
    rep = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(phantoms), "--patients", str(table), "--json", str(rep),
                 "--bootstrap", "200", "-q"]) == 0
    b = json.loads(rep.read_text())["bootstrap"]
    assert b["units"] == len({"n" + str(len(p.name) % 3) for p in phantoms.glob("normal/*.png")}
                             | {"p" + str(len(p.name) % 3) for p in phantoms.glob("pneumonia/*.png")})
    assert "patients.csv (32 of 32 images named)" == b["patients_from"]
    # a data CSV's group column gives the patients too (as for training)
    data_csv = tmp_path / "data.csv"
    files = sorted(phantoms.glob("*/*.png"))
    data_csv.write_text("path,label,group\n" + "".join(f"{p},{p.parent.name},g{i // 4}\n" for i, p in enumerate(files)))
    assert main(["evaluate", str(model), str(tmp_path), "--csv", str(data_csv), "--json", str(rep),
                 "--bootstrap", "100", "-q"]) == 0
    b = json.loads(rep.read_text())["bootstrap"]
    assert b["unit"] == "patient" and b["units"] == 8


def test_evaluate_subgroups_from_a_csv_and_an_audit(model, phantoms, tmp_path, capsys):
    files = sorted(phantoms.glob("*/*.png"))
    table = tmp_path / "sites.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "site"])
        for i, p in enumerate(files[:-2]):  # two images left without a site
            w.writerow([str(p), "north" if i % 2 else "south"])
    rep = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(phantoms), "--groups", str(table), "--group-column", "site",
                 "--bootstrap", "200", "--json", str(rep), "-q"]) == 0
    out = capsys.readouterr().out
    assert "subgroups (site of sites.csv; 2 image(s) without one left out)" in out
    assert "(all)" in out and "north" in out and "south" in out
    s = json.loads(rep.read_text())["subgroups"]
    assert s["column"] == "site" and s["images_without_group"] == 2
    assert [g["group"] for g in s["groups"]] == ["north", "south"]
    assert sum(g["n"] for g in s["groups"]) == 30
    whole = json.loads(rep.read_text())
    for g in s["groups"]:
        assert _within(g, "accuracy")
        flagged = g["accuracy"] < whole["accuracy_ci"][0]
        assert ("accuracy" in g["below"]) == flagged
    # an audit folder: images.csv's cluster column, -1 = none
    audit = tmp_path / "audit"
    audit.mkdir()
    with open(audit / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "cluster", "status"])
        for i, p in enumerate(files):
            w.writerow([str(p.resolve()), p.parent.name, p.parent.name, [-1, 0, 3][i % 3], "ok"])
    assert main(["evaluate", str(model), str(phantoms), "--groups", str(audit), "--bootstrap", "100",
                 "--json", str(rep), "-q"]) == 0
    s = json.loads(rep.read_text())["subgroups"]
    assert [g["group"] for g in s["groups"]] == ["cluster 0", "cluster 3", "none"]
    assert [g["n"] for g in s["groups"]] == [11, 10, 11]
    assert main(["evaluate", str(model), str(phantoms), "--groups", str(table), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--group-column" in err


def test_evaluate_internal_vs_external(model, phantoms, external, tmp_path, capsys):
    rep = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(phantoms), "--external", str(external), "--bootstrap", "200",
                 "--json", str(rep), "-q"]) == 0
    out = capsys.readouterr().out
    assert "internal (32 images) vs external" in out and "drop" in out and "balancing this set" in out
    r = json.loads(rep.read_text())
    ext = r["external"]
    assert ext["n"] == 20 and _within(ext, "accuracy") and ext["data"] == str(external)
    d = r["drop"]["accuracy"]
    assert d["drop"] == pytest.approx(r["accuracy"] - ext["accuracy"])
    assert d["internal"] == r["accuracy"] and d["external"] == ext["accuracy"]
    assert d["drop_ci"] is not None and d["drop_ci"][0] <= d["drop_ci"][1]
    assert set(r["drop"]) >= {"roc_auc", "sensitivity[pneumonia]", "specificity[normal]"}
    for name in ("internal", "external"):
        t = r["thresholds"][name]
        assert t["stored"]["threshold"] == r.get("threshold")
        bal = t["balancing"]
        assert 0 <= bal["threshold"] <= 1
        # no threshold brings sensitivity and specificity closer on that set
        stored = t["stored"]
        gap = abs(stored["sensitivity"] - stored["specificity"])
        assert abs(bal["sensitivity"] - bal["specificity"]) <= gap + 1e-12


def test_localize_intervals(model, tmp_path, capsys):
    from napari_gradcam.phantoms import write_dataset

    images = write_dataset(tmp_path / "images", n_per_class=4, size=40, seed=9, mask_dir=tmp_path / "masks",
                           classes=("normal", "pneumonia"))
    out = tmp_path / "loc.json"
    assert main(["localize", str(model), str(images), str(tmp_path / "masks"), "--method", "gradcam",
                 "--json", str(out), "--bootstrap", "200", "--seed", "1", "-q"]) == 0
    table = capsys.readouterr().out
    assert "[95 % bootstrap interval: 200 resamples" in table
    s = json.loads(out.read_text())["summary"]["gradcam"]
    for k in ("pointing", "energy", "iou_otsu"):
        lo, hi = s[f"{k}_ci"]
        assert lo - 1e-12 <= s[k] <= hi + 1e-12


def test_core_generator_gives_the_cli_report(model, phantoms, tmp_path):
    from napari_gradcam import load_model
    from napari_gradcam.stats import iter_evaluate_folder

    table = tmp_path / "g.csv"
    files = sorted(phantoms.glob("*/*.png"))
    table.write_text("file,site\n" + "".join(f"{p.name},{'ab'[i % 2]}\n" for i, p in enumerate(files)))
    rep = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(phantoms), "--groups", str(table), "--group-column", "site",
                 "--bootstrap", "150", "--seed", "2", "--json", str(rep), "-q"]) == 0
    gen = iter_evaluate_folder(load_model(model, device="cpu"), phantoms, groups=table, group_column="site",
                               bootstrap=150, seed=2, batch_size=10)
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert steps == [(0, 32), (10, 32), (20, 32), (30, 32), (32, 32)]
    cli = json.loads(rep.read_text())
    for key in ("accuracy", "accuracy_ci", "roc_auc_ci", "sensitivity_ci", "bootstrap"):
        assert json.loads(json.dumps(result["report"][key])) == cli[key]  # the same resamples, the same figures
    ours, theirs = result["subgroups"]["groups"], cli["subgroups"]["groups"]
    assert [g["accuracy_ci"] for g in ours] == [g["accuracy_ci"] for g in theirs]
