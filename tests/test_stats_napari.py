"""The Evaluate widget with a real viewer (run under ``xvfb-run -a``): a table with intervals and flags."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  (before any viewer: see _napari/_compat.py)

from napari_helpers import wait  # noqa: E402


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    import napari_gradcam as ng
    from napari_gradcam.phantoms import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("evw") / "data", n_per_class=8, size=32, seed=3,
                         classes=("normal", "pneumonia"))
    bundle = ng.build_model("simple_cnn", classes=["normal", "pneumonia"], in_channels=1, input_size=32)
    return root, bundle


def test_evaluate_widget_table(make_napari_viewer, qtbot, folder_and_model, tmp_path):
    import napari_gradcam as ng
    from napari_gradcam._napari.evaluate_widget import EvaluateWidget
    from napari_gradcam.stats import iter_evaluate_folder

    root, bundle = folder_and_model
    viewer = make_napari_viewer()
    ng.use_model(viewer, bundle)
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Evaluate")
    files = sorted(root.glob("*/*.png"))
    table = tmp_path / "g.csv"
    table.write_text("path,site\n" + "".join(f"{p},{'AB'[i % 2]}\n" for i, p in enumerate(files)))
    assert w.run(root, groups=table, group_column="site", bootstrap=200) is not None
    wait(qtbot, w)
    assert w.last_error is None
    rows = w.table_rows()
    assert rows[0] == ["", "all images", "A", "B"]
    assert [r[0] for r in rows[1:]] == ["images", "accuracy", "bal. acc.", "ROC AUC", "sens pneumonia",
                                        "spec pneumonia"]
    assert rows[1][1:] == ["16", "8", "8"]
    # the same figures as the core's, with their intervals
    gen = iter_evaluate_folder(bundle, root, groups=table, group_column="site", bootstrap=200)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        report = stop.value["report"]
    lo, hi = report["accuracy_ci"]
    assert rows[2][1] == f"{100 * report['accuracy']:.1f} {100 * lo:.1f}–{100 * hi:.1f}"
    from napari_gradcam.stats.bootstrap import figure_name
    from napari_gradcam.stats.subgroups import table_figures

    shown = [figure_name(k, c) for k, c, _ in table_figures(["normal", "pneumonia"])]
    for c, group in enumerate(w.result["subgroups"]["groups"], start=2):
        assert ["!" in row[c] for row in rows[2:]] == [name in group["below"] for name in shown]
    assert "16 images" in w.summary.text()
    # readable in a 420 px dock (1280 x 800 screen): each column as wide as its widest line, all columns in view
    w.resize(420, 700)
    qtbot.wait(50)
    metrics = w.table.fontMetrics()
    for c in range(4):
        widest = max(metrics.horizontalAdvance(line) for r in range(w.table.rowCount())
                     for line in w.table.item(r, c).text().splitlines())
        assert w.table.columnWidth(c) >= widest
    assert sum(w.table.columnWidth(c) for c in range(4)) <= w.table.viewport().width()


def test_evaluate_widget_refuses_without_folder_or_model(make_napari_viewer, tmp_path):
    from napari_gradcam._napari.evaluate_widget import EvaluateWidget

    viewer = make_napari_viewer()
    w = EvaluateWidget(viewer)
    assert w.run(tmp_path / "missing") is None and "data folder" in w.last_error
    assert w.run(tmp_path) is None and "No model is loaded" in w.last_error
