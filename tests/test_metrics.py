"""Classification metrics against hand-checked numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gradcam.errors import GradCamError
from napari_gradcam.metrics import classification_report, format_report, plot_report, roc_auc, save_report


def _probs(pred, n_classes, conf=0.8):
    p = np.full((len(pred), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_three_class_report_matches_hand_computation():
    # truth:      0 0 0 0 | 1 1 1 | 2 2 2 2 2
    # predicted:  0 0 1 2 | 1 1 0 | 2 2 2 1 2
    y = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2, 1, 2]
    r = classification_report(y, _probs(pred, 3), ["normal", "pneumonia", "covid"])
    # confusion matrix by hand (rows truth, columns prediction)
    assert r["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 4]]
    assert r["accuracy"] == pytest.approx(8 / 12)
    # recalls 2/4, 2/3, 4/5 -> balanced accuracy is their mean
    assert r["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 3 + 4 / 5) / 3)
    assert r["sensitivity"] == pytest.approx({"normal": 2 / 4, "pneumonia": 2 / 3, "covid": 4 / 5})
    # specificity of k: TN / (TN + FP) over the images that are not k
    # normal: not-normal 8 images, predicted normal among them 1 -> 7/8
    # pneumonia: not-pneumonia 9, predicted pneumonia among them 2 -> 7/9
    # covid: not-covid 7, predicted covid among them 1 -> 6/7
    assert r["specificity"] == pytest.approx({"normal": 7 / 8, "pneumonia": 7 / 9, "covid": 6 / 7})
    assert r["support"] == {"normal": 4, "pneumonia": 3, "covid": 5} and r["n"] == 12
    assert 0 <= r["roc_auc"] <= 1
    assert json.loads(json.dumps(r)) == r  # JSON-ready


def test_binary_auc_uses_the_second_class():
    y = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.4, 0.9])  # pairs (neg, pos): (.1,.4) ok (.1,.9) ok (.6,.4) wrong (.6,.9) ok
    probs = np.stack([1 - p1, p1], 1)
    assert roc_auc(y, probs) == pytest.approx(0.75)
    r = classification_report(y, probs, ["NORMAL", "PNEUMONIA"])
    assert r["roc_auc"] == pytest.approx(0.75)
    assert r["confusion_matrix"] == [[1, 1], [1, 1]]
    assert r["sensitivity"]["PNEUMONIA"] == 0.5 and r["specificity"]["PNEUMONIA"] == 0.5


def test_absent_class_gives_undefined_values_not_errors():
    r = classification_report([0, 0, 1], _probs([0, 2, 1], 3), ["a", "b", "c"])
    assert r["roc_auc"] is None
    assert r["sensitivity"]["c"] is None and r["specificity"]["c"] == pytest.approx(2 / 3)
    text = format_report(r)
    assert "n/a" in text


def test_bad_shapes_are_one_sentence():
    with pytest.raises(GradCamError, match="do not fit"):
        classification_report([0, 1], np.ones((3, 2)) / 2, ["a", "b"])
    with pytest.raises(GradCamError, match="no images"):
        classification_report([], np.zeros((0, 2)), ["a", "b"])


def test_table_json_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    r = classification_report(y, probs, ["normal", "pneumonia", "covid"])
    text = format_report(r)
    for word in ("accuracy", "balanced accuracy", "ROC AUC", "sensitivity", "specificity", "pneumonia"):
        assert word in text
    assert f"{100 * r['accuracy']:.1f}%" in text
    out = save_report(r, tmp_path / "r.json")
    assert json.loads(out.read_text())["confusion_matrix"] == r["confusion_matrix"]
    png = plot_report(r, y, probs, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # binary plot too
    yb = (y > 0).astype(int)
    pb = np.stack([probs[:, 0], 1 - probs[:, 0]], 1)
    rb = classification_report(yb, pb, ["NORMAL", "PNEUMONIA"])
    assert plot_report(rb, yb, pb, tmp_path / "b.png").is_file()


def test_large_confusion_matrix_is_left_to_the_json():
    n = 30
    classes = [f"c{i}" for i in range(n)]
    y = np.arange(n).repeat(2)
    r = classification_report(y, _probs(y, n), classes)
    text = format_report(r)
    assert "30 x 30, too large to print" in text and "--json" in text
    assert len(text.splitlines()) < n + 15          # one row per class, no matrix
    small = format_report(classification_report([0, 1], _probs([0, 1], 2), ["a", "b"]))
    assert "confusion matrix (rows: true class" in small
