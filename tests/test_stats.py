"""Bootstrap intervals against known answers: scikit-learn on materialised resamples, the Wilson interval,
exact enumeration of every resample of a tiny set; patient-grouped resampling; subgroups; thresholds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from napari_gradcam.errors import GradCamError
from napari_gradcam.metrics import classification_report
from napari_gradcam.stats import (
    Bootstrap, balancing_threshold, below_whole, classification_samples, mean_intervals, percentile_interval,
    report_with_intervals, resample_weights, roc_auc_samples, subgroup_reports, threshold_effects,
)
from napari_gradcam.stats.bootstrap import weighted_mean_samples


def _scores(n, seed=0, k=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.4  # informative, not perfect
    return y, p / p.sum(1, keepdims=True)


def _materialise(w):
    """The image indices of a resample given by its weights (each image repeated w times)."""
    return np.repeat(np.arange(w.size), w)


@pytest.mark.parametrize("k", [2, 3])
def test_every_figure_equals_sklearn_on_the_materialised_resample(k):
    from sklearn.metrics import roc_auc_score

    y, p = _scores(300, seed=k, k=k)
    w = resample_weights(300, 6, seed=1)
    s = classification_samples(w, y, p, p.argmax(1), [f"c{i}" for i in range(k)])
    for b in range(6):
        idx = _materialise(w[b])
        r = classification_report(y[idx], p[idx], [f"c{i}" for i in range(k)])
        assert s["accuracy"][b] == pytest.approx(r["accuracy"])
        assert s["balanced_accuracy"][b] == pytest.approx(r["balanced_accuracy"])
        assert s["roc_auc"][b] == pytest.approx(r["roc_auc"])
        for c in r["sensitivity"]:
            assert s["sensitivity"][c][b] == pytest.approx(r["sensitivity"][c])
            assert s["specificity"][c][b] == pytest.approx(r["specificity"][c])
        if k == 2:  # the weighted Mann-Whitney statistic is sklearn's weighted AUC, ties included
            q = np.round(p[:, 1], 1)  # many ties
            assert roc_auc_samples(w[b:b + 1], y, np.c_[1 - q, q])[0] == pytest.approx(
                roc_auc_score(y, q, sample_weight=w[b]))


def test_accuracy_interval_matches_wilson_for_large_n():
    n, correct = 2000, 1600
    y = np.zeros(n, int)
    p = np.zeros((n, 2))
    p[:correct, 0] = 1  # right
    p[correct:, 1] = 1  # wrong
    y[: n // 2] = 0
    r, _ = report_with_intervals(y, p, ["a", "b"], None, Bootstrap(4000, seed=3))
    z, ph = 1.959964, correct / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    lo, hi = r["accuracy_ci"]
    assert r["accuracy"] == 0.8
    assert lo == pytest.approx(centre - half, abs=0.004) and hi == pytest.approx(centre + half, abs=0.004)


def test_grouped_accuracy_distribution_equals_exact_enumeration():
    # three patients with 1, 2 and 3 images; correct: [1], [1, 0], [0, 0, 1]
    groups = ["p1", "p2", "p2", "p3", "p3", "p3"]
    correct = np.array([1, 1, 0, 0, 0, 1], bool)
    size = {"p1": 1, "p2": 2, "p3": 3}
    right = {"p1": 1, "p2": 1, "p3": 1}
    exact: dict[float, float] = {}
    for draw in itertools.product(size, repeat=3):  # all 27 equally likely draws of 3 patients
        acc = round(sum(right[g] for g in draw) / sum(size[g] for g in draw), 12)
        exact[acc] = exact.get(acc, 0) + 1 / 27
    w = resample_weights(6, 40000, seed=7, groups=groups)
    acc = np.round((w * correct).sum(1) / w.sum(1), 12)
    values, counts = np.unique(acc, return_counts=True)
    assert set(values) == set(exact)
    for v, c in zip(values, counts):
        assert c / len(acc) == pytest.approx(exact[v], abs=0.008)
    # the interval's ends are the exact distribution's quantiles
    xs = sorted(exact)
    cdf = np.cumsum([exact[x] for x in xs])
    lo_exact = xs[int(np.searchsorted(cdf, 0.025))]
    hi_exact = xs[int(np.searchsorted(cdf, 0.975))]
    assert percentile_interval(acc) == pytest.approx([lo_exact, hi_exact])


def test_each_resample_keeps_whole_patients():
    groups = [f"p{i // 3}" for i in range(30)] + [f"q{i}" for i in range(5)]
    w = resample_weights(35, 200, seed=0, groups=groups)
    for g in set(groups):
        cols = w[:, [i for i, x in enumerate(groups) if x == g]]
        assert (cols == cols[:, :1]).all()
    # G = 15 patients are drawn per resample: the images' weights add up to the drawn patients' sizes
    per_patient = np.stack([w[:, groups.index(g)] for g in dict.fromkeys(groups)], 1)
    assert (per_patient.sum(1) == 15).all()


def test_repeated_patients_widen_the_interval_exactly_as_their_count():
    y, p = _scores(120, seed=4)
    copies = 4
    yy, pp = np.repeat(y, copies), np.repeat(p, copies, axis=0)
    patients = np.repeat(np.arange(120), copies).astype(str)
    once, _ = report_with_intervals(y, p, ["a", "b"], None, Bootstrap(500, seed=2))
    grouped, _ = report_with_intervals(yy, pp, ["a", "b"], None, Bootstrap(500, seed=2, groups=list(patients)))
    naive, _ = report_with_intervals(yy, pp, ["a", "b"], None, Bootstrap(500, seed=2))
    for key in ("accuracy_ci", "balanced_accuracy_ci", "roc_auc_ci"):
        assert grouped[key] == pytest.approx(once[key])  # same draws of the 120 patients: the same figures
        assert np.diff(naive[key])[0] < 0.75 * np.diff(grouped[key])[0]  # by image: about half as wide
    assert grouped["bootstrap"]["unit"] == "patient" and grouped["bootstrap"]["units"] == 120
    assert naive["bootstrap"]["unit"] == "image" and naive["bootstrap"]["units"] == 480


def test_intervals_contain_the_estimates_and_keep_the_old_keys():
    y, p = _scores(400, seed=9, k=3)
    plain = classification_report(y, p, ["a", "b", "c"])
    r = classification_report(y, p, ["a", "b", "c"], bootstrap=Bootstrap(300))
    assert {k: v for k, v in r.items() if not k.endswith("_ci") and k != "bootstrap"} == plain
    for key in ("accuracy", "balanced_accuracy", "roc_auc"):
        assert r[f"{key}_ci"][0] <= r[key] <= r[f"{key}_ci"][1]
    for c in "abc":
        assert r["sensitivity_ci"][c][0] <= r["sensitivity"][c] <= r["sensitivity_ci"][c][1]
    assert r["bootstrap"] == {"resamples": 300, "seed": 0, "level": 0.95, "method": "percentile", "unit": "image",
                              "units": 400}
    again = classification_report(y, p, ["a", "b", "c"], bootstrap=Bootstrap(300))
    assert again == r  # the seed fixes the resamples


def test_undefined_figures_and_bad_settings():
    y = np.array([0, 0, 0, 0, 0, 1])
    p = np.array([[0.9, 0.1]] * 5 + [[0.2, 0.8]])
    r, _ = report_with_intervals(y, p, ["a", "b"], None, Bootstrap(400, seed=0))
    # class b is missing from about a third of resamples: its sensitivity's interval uses the others
    assert r["sensitivity_ci"]["b"] == [1.0, 1.0]
    assert percentile_interval(np.array([np.nan] * 3 + [1.0])) is None
    with pytest.raises(GradCamError, match="whole number"):
        Bootstrap(-1)
    with pytest.raises(GradCamError, match="level"):
        Bootstrap(10, level=1.5)
    with pytest.raises(GradCamError, match="group ids"):
        Bootstrap(10, groups=["a"]).weights(3)
    assert resample_weights(5, 0).shape == (0, 5)


def test_weighted_means_leave_out_undefined_values_and_pair_methods():
    w = np.array([[1, 1, 1], [2, 0, 1], [0, 0, 3]])
    assert weighted_mean_samples(w, [1.0, None, 0.0]).tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    rows = [(f"person{i}_a.png", m, {"pointing": float(i % 2 == 0 or m == "cam"), "iou_otsu": 0.1 * (i % 5)})
            for i in range(40) for m in ("cam", "gradcam")]
    ci = mean_intervals(rows, {"resamples": 500, "seed": 1, "level": 0.95, "group_pattern": "auto"})
    assert ci["cam"]["pointing"] == [1.0, 1.0]
    lo, hi = ci["gradcam"]["pointing"]
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 40), abs=0.06)


def test_subgroups_below_the_whole_set_are_flagged():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    group = np.where(np.arange(n) < 100, "scanner B", "scanner A")
    right = np.where(group == "scanner A", rng.random(n) < 0.95, rng.random(n) < 0.6)
    pred = np.where(right, y, 1 - y)
    p = np.c_[1 - (0.2 + 0.6 * pred), 0.2 + 0.6 * pred]
    whole, _ = report_with_intervals(y, p, ["neg", "pos"], None, Bootstrap(300))
    rows = subgroup_reports(y, p, ["neg", "pos"], list(group[:-5]) + [None] * 5, None, Bootstrap(300), whole)
    assert [r["group"] for r in rows] == ["scanner A", "scanner B"]
    a, b = rows
    assert b["n"] == 100 and a["n"] == 495 and b["units"] == 100
    assert "accuracy" in b["below"] and "balanced_accuracy" in b["below"] and a["below"] == []
    assert b["accuracy_ci"][0] <= b["accuracy"] <= b["accuracy_ci"][1]
    assert below_whole(whole, whole) == []


def test_balancing_threshold_and_threshold_effects():
    y = np.array([0] * 6 + [1] * 4)
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.5, 0.8, 0.9, 0.95])
    p = np.c_[1 - s, s]
    t = balancing_threshold(y, p)
    eff = threshold_effects(y, p, stored=0.85)
    assert eff["stored"]["threshold"] == 0.85
    assert eff["stored"]["sensitivity"] == 0.5 and eff["stored"]["specificity"] == 1.0
    bal = eff["balancing"]
    assert bal["threshold"] == pytest.approx(t)
    # the closest sensitivity and specificity reachable on these scores: 0.75 / 0.833 (t between 0.6 and
    # 0.7) and 0.75 / 0.667 (between 0.5 and 0.6) are equally close; the upper one of the two midpoints is taken
    assert t == pytest.approx(0.65) and bal["sensitivity"] == 0.75 and bal["specificity"] == pytest.approx(5 / 6)
    assert balancing_threshold([0, 0], np.array([[0.5, 0.5]] * 2)) is None
    assert threshold_effects([0, 1], np.full((2, 3), 1 / 3), None) is None


def _shared_data(name: str):
    """``../shared/data/NAME`` beside the checkout (or a worktree's), or $NAPARI_GRADCAM_DATA/NAME; None if absent."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    roots = [os.environ.get("NAPARI_GRADCAM_DATA"), repo.parent / "shared" / "data",
             repo.parent.parent / "shared" / "data"]
    return next((Path(r) / name for r in roots if r and (Path(r) / name).is_dir()), None)


HANNOVER = _shared_data("covid_hannover_256")


@pytest.mark.skipif(HANNOVER is None, reason="the shared Hannover data set is not here")
def test_hannover_patients_come_from_its_manifest():
    import csv as _csv

    from napari_gradcam.data import scan_folder
    from napari_gradcam.stats import patient_table, resampling_units

    data = scan_folder(HANNOVER, check=False)
    table = patient_table(HANNOVER)
    assert table == HANNOVER / "manifest.csv"
    units, source = resampling_units(data.paths, data.groups, table)
    with open(table, newline="") as f:
        patients = {r["patient"] for r in _csv.DictReader(f)}
    assert len(data) == 243 and set(units) == {f"patient:{p}" for p in patients}
    assert source == f"manifest.csv (243 of 243 images named)"
    assert patient_table(HANNOVER / "COVID") == table  # from the class folder's parent too
    w = resample_weights(len(units), 50, groups=units)
    assert all((w[:, [i for i, u in enumerate(units) if u == g]] == w[:, [units.index(g)]]).all() for g in set(units))


def test_many_classes_stay_cheap(monkeypatch):
    from napari_gradcam.stats import bootstrap as bs

    y, p = _scores(1200, seed=1, k=40)  # about 30 images per class: each class in (nearly) every resample
    r, _ = report_with_intervals(y, p, [f"c{i}" for i in range(40)], None, Bootstrap(50))
    assert r["roc_auc_ci"] is not None and "note" not in r["bootstrap"]
    monkeypatch.setattr(bs, "MAX_AUC_WORK", 50 * 1200 * 39)  # just below 50 resamples x 1200 images x 40 classes
    r2, _ = report_with_intervals(y, p, [f"c{i}" for i in range(40)], None, Bootstrap(50))
    assert r2["roc_auc_ci"] is None and "too costly" in r2["bootstrap"]["note"]
    assert r2["accuracy_ci"] == r["accuracy_ci"] and r2["sensitivity_ci"] == r["sensitivity_ci"]


def test_roc_band_is_the_roc_curve_for_one_full_resample_and_holds_it_otherwise():
    from sklearn.metrics import roc_curve

    from napari_gradcam.stats.bootstrap import roc_band

    y, p = _scores(400, seed=5)
    q = np.round(p[:, 1], 2)  # ties
    grid = np.linspace(0, 1, 51)
    fpr, tpr, _ = roc_curve(y, q, drop_intermediate=False)
    lo, hi = roc_band(np.ones((1, 400)), y == 1, q, grid)
    assert lo == pytest.approx(np.interp(grid, fpr, tpr)) and hi == pytest.approx(lo)
    lo, hi = roc_band(resample_weights(400, 400, seed=3), y == 1, q, grid)
    curve = np.interp(grid, fpr, tpr)
    assert ((lo <= curve + 1e-12) & (curve <= hi + 1e-12)).all()
    rising = (curve > 0.05) & (curve < 0.95)  # where the curve is neither at 0 nor at 1, the band has a width
    assert rising.sum() >= 3 and ((hi - lo)[rising] > 0.02).all()
