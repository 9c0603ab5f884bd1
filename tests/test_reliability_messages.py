"""Issue 15, family 5: messages that say what happened.

File names with control characters are escaped in every message (one line, no terminal escapes);
``predict`` on one unreadable file says why; a CSV row naming a file outside the data folder is said
so; a CSV naming the same images many times is read once per image, with a note.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import pytest
from reliability_helpers import cli_error, run_cli, save_png, save_tiny_model

from napari_gradcam.data import folders as data_module
from napari_gradcam.data import read_image, scan_folder
from napari_gradcam.errors import DatasetError, GradCamError, GradCamWarning, ImageError, OutputError, shown

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
CLASSES = ["normal", "pneumonia", "covid"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "m.safetensors")


# ----------------------------------------------------------------------------- control characters
def test_shown_escapes_only_what_cannot_be_printed():
    assert shown("scan é 肺炎.png") == "scan é 肺炎.png"
    assert shown("a\nb\tc\x1b[31m\x00.png") == "a\\nb\\tc\\x1b[31m\\x00.png"
    assert shown(shown("a\nb")) == shown("a\nb")  # idempotent: escaping twice changes nothing


def test_every_error_of_the_family_is_one_printable_line():
    for cls in (GradCamError, ImageError, DatasetError, OutputError):
        e = cls("No image file at evil\n\x1b[2Jname.png.")
        assert str(e) == "No image file at evil\\n\\x1b[2Jname.png." and str(e).isprintable()


def test_names_with_newlines_stay_on_one_line_in_the_cli(tmp_path, capsys, model):
    odd = tmp_path / "scan\nsecond line.png"
    cli_error(capsys, ["explain", model, odd, "--out", tmp_path / "h.tif"], "scan\\nsecond line.png")
    cli_error(capsys, ["explain", model, save_png(tmp_path / "ok.png"), "--out", tmp_path / "h\n.png"], "h\\n.png")
    cli_error(capsys, ["evaluate", model, tmp_path / "da\x1b[31mta", "-q"], "da\\x1b[31mta")
    with pytest.raises(ImageError) as err:
        read_image(odd)
    assert "\n" not in str(err.value)


def test_skipped_files_are_listed_one_per_line(tmp_path, capsys, model):
    folder = tmp_path / "scans"
    save_png(folder / "good.png")
    (folder / "bad\nname.png").write_bytes(b"not an image")
    (folder / "worse\x1b[31m.png").write_bytes(b"")
    code, out, err = run_cli(capsys, ["predict", model, folder, "-q"])
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("skipped ") and line.isprintable() for line in lines), err
    assert any("bad\\nname.png" in line for line in lines) and any("worse\\x1b[31m.png" in line for line in lines)
    assert len(list(csv.reader(io.StringIO(out)))) == 2  # header and the one readable image


# ----------------------------------------------------------------------------- predict keeps the reason
def test_predict_on_one_unreadable_file_says_why(tmp_path, capsys, model):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    line = cli_error(capsys, ["predict", model, bad, "-q"], "broken.png could not be read as an image")
    assert "(" in line  # the decoder's own reason, in brackets
    other = tmp_path / "also.png"
    other.write_bytes(b"")
    line = cli_error(capsys, ["predict", model, bad, other, "-q"], "None of the 2 file(s)", "e.g.")
    assert "could not be read" in line


# ----------------------------------------------------------------------------- CSVs
def _images(root: Path) -> dict[str, Path]:
    return {c: save_png(root / c / f"{c}.png", seed=i) for i, c in enumerate(CLASSES)}


def test_a_csv_row_outside_the_data_folder_is_said(tmp_path, capsys, model):
    inside = _images(tmp_path / "data")
    outside = save_png(tmp_path / "elsewhere" / "x.png", seed=9)
    listing = tmp_path / "data" / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{c}/{p.name},{c}\n" for c, p in inside.items())
                       + "../elsewhere/x.png,normal\n")
    with pytest.warns(GradCamWarning, match=r"1 row\(s\) of the CSV name files outside the data folder"):
        data = scan_folder(None, csv=listing)
    assert len(data) == 4 and len(data.notes) == 1 and outside.name in data.notes[0]
    code, _, err = run_cli(capsys, ["evaluate", model, listing.parent, "--csv", listing, "-q"])
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("napari-gradcam: note:")]
    assert len(notes) == 1 and "outside the data folder" in notes[0]


def test_a_csv_naming_the_same_images_many_times_is_read_once_per_image(tmp_path, capsys, model, monkeypatch):
    images = _images(tmp_path / "data")
    listing = tmp_path / "data" / "many.csv"
    rows = ["path,label"] + [f"{c}/{images[c].name},{c}" for _ in range(40_000) for c in CLASSES]
    listing.write_text("\n".join(rows) + "\n")
    checks = []
    real_check = data_module._quick_check
    monkeypatch.setattr(data_module, "_quick_check", lambda p: checks.append(p) or real_check(p))
    with pytest.warns(GradCamWarning, match=r"The CSV names 3 file\(s\) in 120000 rows; each file was used once"):
        data = scan_folder(None, csv=listing)
    assert len(data) == 3 and len(checks) == 3 and data.skipped == []
    code, out, err = run_cli(capsys, ["evaluate", model, listing.parent, "--csv", listing, "-q"])
    assert code == 0 and "120000 rows" in err


def test_an_image_listed_with_two_labels_is_left_out(tmp_path):
    images = _images(tmp_path / "data")
    listing = tmp_path / "data" / "two.csv"
    listing.write_text("path,label\n"
                       f"normal/{images['normal'].name},normal\n"
                       f"./normal/{images['normal'].name},covid\n"
                       f"covid/{images['covid'].name},covid\n"
                       f"pneumonia/{images['pneumonia'].name},pneumonia\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradCamWarning)
        data = scan_folder(None, csv=listing)
    assert sorted(p.name for p in data.paths) == ["covid.png", "pneumonia.png"]
    (path, why), = data.skipped
    assert path.name == "normal.png" and why == "listed with labels 'covid', 'normal', so its class is ambiguous"


def test_folders_and_plain_csvs_give_no_notes(tmp_path):
    images = _images(tmp_path / "data")
    listing = tmp_path / "data" / "plain.csv"
    listing.write_text("path,label\n" + "".join(f"{c}/{p.name},{c}\n" for c, p in images.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradCamWarning)
        assert scan_folder(None, csv=listing).notes == []
        assert scan_folder(tmp_path / "data").notes == []
