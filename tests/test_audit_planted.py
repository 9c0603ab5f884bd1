"""The audit finds a planted shortcut: a text stamp burned into the corner of a third of one class's films,
which carry no lesion, so the stamp is what marks them (a model trained through our CLI learns it; checked
by insertion before the audit is scored).  Everything runs through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit_phantoms import STAMP_BOX, train_cli, write_planted
from napari_gradcam.cli import main


@pytest.fixture(scope="module")
def planted(tmp_path_factory, torch_one_thread_module):
    root = tmp_path_factory.mktemp("planted")
    data, stamped = write_planted(root / "data")
    model = train_cli(data, root / "m.safetensors")
    out = root / "audit"
    assert main(["audit", str(model), str(data), "--out", str(out), "--batch-size", "32", "-q"]) == 0
    return data, {str(p) for p in stamped}, model, out


def _read(paths):
    from napari_gradcam.data import read_image

    return [read_image(p) for p in sorted(paths)]


def test_the_stamp_matters_to_the_model(planted):
    """Before scoring the audit: pasting the stamp into clear films makes them 'lesion'; the same patch
    from the opposite corner does not."""
    import napari_gradcam as ng
    from napari_gradcam.audit import insertion_test

    data, stamped, model, _ = planted
    b = ng.load_model(model)
    clear = _read(list((data / "clear").glob("*.png"))[:30])
    ins = insertion_test(b, _read(stamped), clear, STAMP_BOX, b.classes.index("lesion"))
    assert ins["rate"] >= 0.8 and ins["control"]["rate"] <= 0.2


def _stamp_cluster(findings, stamped):
    best = max(findings["clusters"], key=lambda c: len(set(c["members"]) & stamped))
    return best, len(set(best["members"]) & stamped)


def test_planted_images_form_their_own_cluster(planted):
    from napari_gradcam.audit import Audit

    _, stamped, _, out = planted
    a = Audit.load(out)
    c, hits = _stamp_cluster(a.findings, stamped)
    assert c["class"] == "lesion"
    assert hits / c["size"] >= 0.9  # purity
    assert hits / len(stamped) >= 0.9  # recall
    rows = a.table[a.table["cluster"] == c["id"]]
    assert set(rows["path"]) == set(c["members"])
    assert rows["atypical"].mean() > a.table[(a.table["predicted"] == "lesion") & (a.table["cluster"] != c["id"])][
        "atypical"].mean()


def test_the_clusters_box_covers_the_stamp(planted):
    _, stamped, _, out = planted
    c, _ = _stamp_cluster(json.loads((out / "findings.json").read_text()), stamped)
    y0, x0, y1, x1 = c["box"]
    cy, cx = (STAMP_BOX[0] + STAMP_BOX[2]) / 2, (STAMP_BOX[1] + STAMP_BOX[3]) / 2
    assert y0 <= cy <= y1 and x0 <= cx <= x1  # holds the stamp's centre
    overlap = (min(y1, STAMP_BOX[2]) - max(y0, STAMP_BOX[0])) * (min(x1, STAMP_BOX[3]) - max(x0, STAMP_BOX[1]))
    stamp_area = (STAMP_BOX[2] - STAMP_BOX[0]) * (STAMP_BOX[3] - STAMP_BOX[1])
    assert overlap / stamp_area >= 0.6
    assert (y1 - y0) * (x1 - x0) <= 0.25  # and is a local region, not the image


def test_removal_and_insertion_confirm_the_shortcut(planted):
    _, stamped, _, out = planted
    f = json.loads((out / "findings.json").read_text())
    c, _ = _stamp_cluster(f, stamped)
    assert c["verdict"] == "likely shortcut"
    assert f["clusters"][0]["id"] == c["id"] or f["clusters"][0]["verdict"] == "likely shortcut"  # shortcuts first
    r, i = c["removal"], c["insertion"]
    assert r["rate"] - r["control"]["rate"] >= 0.6 and r["drop"] > 0.3
    assert i["rate"] - i["control"]["rate"] >= 0.6
    assert "Fisher" in c["reason"] and f"{r['changed']}/{r['n']}" in c["reason"]


def test_outputs_follow_the_contract(planted):
    import pandas as pd

    from napari_gradcam.audit import Audit

    data, stamped, _, out = planted
    table = pd.read_csv(out / "images.csv", keep_default_na=False)
    expected = ["path", "label", "predicted", "p_clear", "p_lesion", "cluster", "atypical", "frame_share",
                "outside_mask_share"] + [f"cell_{r}_{c}" for r in range(4) for c in range(4)] + ["status"]
    assert list(table.columns) == expected
    assert len(table) == 180 and set(table["status"]) == {"ok"}
    assert (table["outside_mask_share"] == "").all()  # no masks
    np.testing.assert_allclose(table[[f"cell_{r}_{c}" for r in range(4) for c in range(4)]].sum(axis=1), 1, atol=1e-4)
    f = json.loads((out / "findings.json").read_text())
    assert f["version"] == 1 and f["classes"] == ["clear", "lesion"] and f["method"] == "gradcam"
    ids = [c["id"] for c in f["clusters"]]
    assert len(set(ids)) == len(ids) and min(ids) >= 0
    assert set(table["cluster"]) == set(ids)
    for c in f["clusters"]:
        assert c["verdict"] in ("likely shortcut", "no evidence", "not tested")
        assert all(0 <= v <= 1 for v in c["box"])
    a = Audit.load(out)  # round trip: the loaded audit saves the same files
    a.save(out.parent / "again")
    assert (out.parent / "again" / "images.csv").read_text() == (out / "images.csv").read_text()
    assert json.loads((out.parent / "again" / "findings.json").read_text()) == f
    assert a.maps("grid").shape == (180, 32, 32) and a.maps("class_means").shape == (2, 32, 32)


def test_report_is_one_self_contained_page(planted):
    _, stamped, _, out = planted
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 + 12  # mean maps, embedding, a gallery
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.index("Verdicts") < html.index("Where the evidence lies") < html.index("Clusters")
    assert "likely shortcut" in html


def test_compare_says_whether_a_finding_is_gone(planted, tmp_path, capsys):
    """audit NEW --compare OLD:ID re-runs the old finding's tests on the new model: the same model still uses
    the stamp; a model trained without the stamped films does not (unlearning itself is measured in
    tests/test_unlearn_planted.py)."""
    import shutil

    data, stamped, model, out = planted
    f = json.loads((out / "findings.json").read_text())
    cid = _stamp_cluster(f, stamped)[0]["id"]
    again = tmp_path / "again"
    assert main(["audit", str(model), str(data), "--out", str(again), "--compare", f"{out}:{cid}", "-q"]) == 0
    (same,) = json.loads((again / "findings.json").read_text())["comparison"]["findings"]
    assert same["id"] == cid and not same["gone"] and "still used" in same["reason"]
    assert "re-checked on this model" in (again / "report.html").read_text()
    m2 = tmp_path / "m2.safetensors"
    clean = shutil.copytree(data, tmp_path / "clean")
    for p in stamped:
        (clean / Path(p).relative_to(data)).unlink()
    train_cli(clean, m2)
    after = tmp_path / "after"
    assert main(["audit", str(m2), str(data), "--out", str(after), "--compare", f"{out}:{cid}", "--no-confirm",
                 "-q"]) == 0
    (gone,) = json.loads((after / "findings.json").read_text())["comparison"]["findings"]
    assert gone["gone"], gone["reason"]
    assert "gone" in capsys.readouterr().out


def test_existing_output_is_refused_without_resume_or_overwrite(planted, capsys):
    data, _, model, out = planted
    assert main(["audit", str(model), str(data), "--out", str(out), "-q"]) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "findings.json").read_text()
    assert main(["audit", str(model), str(data), "--out", str(out), "--resume", "-q", "--no-confirm"]) == 0
    assert (out / "findings.json").read_text() != before  # the maps reused, the tests switched off
