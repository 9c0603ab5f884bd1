"""DICOM files (written here with pydicom) read with the right orientation, contrast, window, spacing and
de-identified metadata; the same files train, predict and evaluate through data.read_image."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_helpers import (  # noqa: E402
    IDENTIFYING,
    bright_square,
    write_dicom,
    write_jpeg_dicom,
    write_unreadable_compressed,
)
from pydicom import uid  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

from napari_gradcam.data import is_image_file, read_image, scan_folder  # noqa: E402
from napari_gradcam.dicom import check_dicom, has_dicm_preamble, read_dicom  # noqa: E402
from napari_gradcam.errors import ImageError  # noqa: E402

RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit stored value once, row-major


def _linear_window(x, centre, width):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), scaled to [0, 1]: written out here, independent of the reader."""
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


# ----------------------------------------------------------------------------- orientation and contrast
@pytest.mark.parametrize("bits", [12, 16])
def test_bright_object_stays_bright_and_in_place(tmp_path, bits):
    high = 2**bits - 100
    img = read_dicom(write_dicom(tmp_path / "a.dcm", bright_square(high=high), bits_stored=bits))
    assert img.data.dtype == np.float32 and img.data.shape == (48, 64)
    assert np.all(img.data[4:16, 6:20] == 1.0)  # the square, top-left, full brightness
    outside = np.ones_like(img.data, dtype=bool)
    outside[4:16, 6:20] = False
    assert np.all(img.data[outside] == 0.0)
    assert img.metadata["inverted"] is False and "own range" in img.metadata["voi"]


@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome1_is_inverted(tmp_path, bits):
    top = 2**bits - 1
    picture = bright_square(low=200, high=top - 300)
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", picture, bits_stored=bits))
    # the same picture as MONOCHROME1 stores the dense square with LOW values
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", (top - picture).astype(np.uint16), bits_stored=bits,
                                   photometric="MONOCHROME1"))
    assert mono1.metadata["inverted"] is True
    np.testing.assert_allclose(mono1.data, mono2.data, atol=1e-6)
    assert mono1.data[10, 10] == 1.0 and mono1.data[40, 50] == 0.0  # the square is bright
    # and a MONOCHROME1 file whose square has HIGH stored values shows it dark
    dark = read_dicom(write_dicom(tmp_path / "d.dcm", picture, bits_stored=bits, photometric="MONOCHROME1"))
    assert dark.data[10, 10] == 0.0 and dark.data[40, 50] == 1.0


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    # a window that clips the bright end: MONOCHROME1 must read 1 - window(x), not window(1 - x)
    path = write_dicom(tmp_path / "w.dcm", RAMP, bits_stored=12, photometric="MONOCHROME1", window=(1000, 801))
    got = read_dicom(path).data
    np.testing.assert_allclose(got, 1.0 - _linear_window(RAMP.astype(float), 1000, 801), atol=1e-6)


# ----------------------------------------------------------------------------- the modality LUT and the VOI
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_rescale_then_window_matches_the_standard_and_pydicom(tmp_path, photometric):
    centre, width = 1000.0, 2001.0
    path = write_dicom(tmp_path / "r.dcm", RAMP, bits_stored=12, slope=2.0, intercept=-1024.0,
                       window=([centre, 3000.0], [width, 500.0]), photometric=photometric)
    img = read_dicom(path)
    expected = _linear_window(2.0 * RAMP - 1024.0, centre, width)  # modality LUT by hand, then the first window
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(img.data, expected, atol=1e-6)
    assert 0 < (img.data > 0).mean() < 1 and 0 < (img.data < 1).mean() < 1  # the window really clips
    # cross-check: pydicom's own LUT functions, scaled by the output range its documentation gives
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    lo, hi = 0 * 2.0 - 1024.0, 4095 * 2.0 - 1024.0
    ref = (ref - lo) / (hi - lo)
    np.testing.assert_allclose(img.data, 1.0 - ref if photometric == "MONOCHROME1" else ref, atol=1e-6)
    w = img.metadata["window"]
    assert (w["center"], w["width"], w["function"], w["of"]) == (centre, width, "LINEAR", 2)
    assert "centre 1000, width 2001" in img.metadata["voi"]


def test_sigmoid_window(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", RAMP, bits_stored=12, window=(2000, 800, "SIGMOID"))
    got = read_dicom(path).data
    expected = 1.0 / (1.0 + np.exp(-4.0 * (RAMP.astype(float) - 2000) / 800))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_signed_pixels_with_a_ct_window(tmp_path):
    hu = np.linspace(-1000, 1000, 48 * 64).reshape(48, 64)
    stored = np.round(hu + 1024).astype(np.int16)  # signed storage, intercept -1024
    img = read_dicom(write_dicom(tmp_path / "ct.dcm", stored, bits_stored=16, slope=1, intercept=-1024,
                                 window=(-600, 1500)))
    np.testing.assert_allclose(img.data, _linear_window(stored.astype(float) - 1024, -600, 1500), atol=1e-6)


@pytest.mark.parametrize("declared_bits, vr", [(12, "US"), (16, "US"), (16, "OW")])
def test_voi_lut_is_used_before_the_window(tmp_path, declared_bits, vr):
    lut = np.round(4095 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)  # a gamma curve, 12-bit output
    path = write_dicom(tmp_path / "l.dcm", RAMP, bits_stored=12, voi_lut=lut, lut_bits=declared_bits, lut_vr=vr,
                       window=(100, 10))
    img = read_dicom(path)
    np.testing.assert_allclose(img.data, lut[RAMP] / 4095.0, atol=1e-6)  # a 12-bit LUT declared 16 is 12-bit
    assert img.metadata["voi"] == "VOI LUT 1 of 1 (test curve)"
    assert img.metadata["window"]["bits"] == 12
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(apply_voi_lut(ds.pixel_array, ds, index=0), lut[RAMP])  # pydicom agrees


def test_voi_lut_with_rescale_indexes_by_the_modality_value(tmp_path):
    lut = (np.arange(2048) // 8).astype(np.uint16)  # 8-bit output over 2048 entries
    path = write_dicom(tmp_path / "lr.dcm", RAMP, bits_stored=12, slope=0.5, intercept=0, voi_lut=lut, lut_bits=8)
    expected = lut[np.clip(np.rint(RAMP * 0.5).astype(int), 0, 2047)] / 255.0
    np.testing.assert_allclose(read_dicom(path).data, expected, atol=1e-6)


def test_an_invalid_window_falls_back_to_the_image_range(tmp_path):
    img = read_dicom(write_dicom(tmp_path / "bad.dcm", bright_square(), window=(500, 0)))
    assert "invalid" in img.metadata["voi"]
    assert img.data[10, 10] == 1.0 and img.data[40, 50] == 0.0


# ----------------------------------------------------------------------------- spacing and metadata
def test_pixel_spacing_and_imager_spacing(tmp_path):
    a = read_dicom(write_dicom(tmp_path / "a.dcm", bright_square(), spacing=(0.2, 0.15), imager_spacing=(0.3, 0.3)))
    assert a.spacing == (0.2, 0.15) and a.metadata["spacing_source"] == "PixelSpacing"
    b = read_dicom(write_dicom(tmp_path / "b.dcm", bright_square(), imager_spacing=(0.143, 0.139)))
    assert b.spacing == (0.143, 0.139) and b.metadata["spacing_source"] == "ImagerPixelSpacing"
    c = read_dicom(write_dicom(tmp_path / "c.dcm", bright_square()))
    assert c.spacing is None and c.metadata["spacing_mm"] is None


def test_metadata_identifies_no_one(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", bright_square(), bits_stored=12, window=(1500, 2000),
                       photometric="MONOCHROME1", spacing=(0.2, 0.2))
    meta = read_dicom(path).metadata
    text = json.dumps(meta)  # JSON-friendly as well
    ds = pydicom.dcmread(path)
    for value in [*IDENTIFYING.values(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]:
        assert str(value) not in text, value
    tags = meta["dicom"]
    assert tags["Modality"] == "DX" and tags["ViewPosition"] == "PA"
    assert tags["PhotometricInterpretation"] == "MONOCHROME1" and tags["BitsStored"] == 12
    assert tags["PixelSpacing"] == [0.2, 0.2] and tags["WindowCenter"] == 1500.0
    assert meta["window"]["center"] == 1500.0 and meta["transfer_syntax"] == "Explicit VR Little Endian"
    assert not any(k.startswith(("Patient", "Study", "Institution", "Accession")) for k in tags if k != "PatientOrientation")


# ----------------------------------------------------------------------------- files and transfer syntaxes
def test_rle_and_raw_datasets_read_like_the_plain_file(tmp_path):
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", RAMP, bits_stored=12, window=(2000, 3000))).data
    rle = read_dicom(write_dicom(tmp_path / "r.dcm", RAMP, bits_stored=12, window=(2000, 3000), syntax=uid.RLELossless))
    assert rle.metadata["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(rle.data, plain)
    raw_path = write_dicom(tmp_path / "raw.dcm", RAMP, bits_stored=12, window=(2000, 3000), part10=False)
    assert not has_dicm_preamble(raw_path)
    np.testing.assert_array_equal(read_dicom(raw_path).data, plain)


def test_jpeg_baseline_decodes_through_pillow(tmp_path):
    picture = (bright_square(low=20, high=220)).astype(np.uint8)
    img = read_dicom(write_jpeg_dicom(tmp_path / "j.dcm", picture))
    assert img.metadata["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert img.data[8:12, 10:16].min() > 0.9 and img.data[30:40, 30:60].max() < 0.1  # lossy, but in place


def test_a_compression_without_decoder_is_one_sentence(tmp_path):
    path = write_unreadable_compressed(tmp_path / "jl.dcm")
    with pytest.raises(ImageError) as e:
        read_image(path)
    msg = str(e.value)
    assert "jl.dcm is compressed as JPEG Lossless" in msg and "python-gdcm" in msg and "\n" not in msg
    assert check_dicom(path) == msg  # the header check says the same without decoding


def test_read_image_finds_dicom_by_suffix_and_by_preamble(tmp_path):
    path = write_dicom(tmp_path / "1.2.840.10008.99.7", bright_square(), bits_stored=12)  # a UID-like name
    assert is_image_file(path) and has_dicm_preamble(path)
    by_name = read_image(write_dicom(tmp_path / "x.DCM", bright_square(), bits_stored=12))
    np.testing.assert_array_equal(read_image(path), by_name)
    assert by_name.dtype == np.float32 and by_name[10, 10] == 1.0
    (tmp_path / "notes.txt").write_text("not an image")
    assert not is_image_file(tmp_path / "notes.txt")


@pytest.mark.parametrize("content, words", [
    (b"hello, not dicom at all" * 3, "could not be read as DICOM"),
    (b"", "could not be read as DICOM"),
])
def test_a_non_dicom_dcm_file_is_one_sentence(tmp_path, content, words):
    path = tmp_path / "fake.dcm"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=words):
        read_image(path)


def test_a_truncated_file_is_one_sentence(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", RAMP, bits_stored=12)
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert str(e.value).startswith("The pixel data of cut.dcm could not be decoded") and "\n" not in str(e.value)


def test_files_without_an_image_or_with_frames(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid.BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.Modality = "SR"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match="holds no image"):
        read_image(tmp_path / "report.dcm")
    frames = np.stack([bright_square(), bright_square()[::-1], bright_square()[:, ::-1]])
    stack = read_dicom(write_dicom(tmp_path / "mf.dcm", frames, bits_stored=12))
    assert stack.frames == 3 and stack.data.shape == (3, 48, 64)
    assert stack.data[1, -10, 10] == 1.0  # each frame keeps its own orientation
    with pytest.raises(ImageError, match="holds 3 frames"):
        read_image(tmp_path / "mf.dcm")


def test_rgb_dicom_keeps_its_colours(tmp_path):
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[2:6, 3:9, 2] = 255
    img = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb))
    np.testing.assert_array_equal(img.data, rgb)
    assert img.metadata["colour"] is True


# ----------------------------------------------------------------------------- data sets: train, predict, evaluate
def _dicom_dataset(root, n_per_class=8, size=40):
    """Phantoms as 12-bit DICOM (MONOCHROME1 and 2, .dcm and UID-like names) beside the same images as PNG."""
    from PIL import Image

    from napari_gradcam.phantoms import make_batch

    classes = ["normal", "pneumonia"]
    images, _, labels = make_batch(n_per_class, size=size, seed=5, classes=classes)
    for k, (img, lab) in enumerate(zip(images, labels)):
        c = classes[lab]
        (root / "dcm" / c).mkdir(parents=True, exist_ok=True)
        (root / "png" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "png" / c / f"{c}_{k:03d}.png")
        stored = img.astype(np.uint16) * 16
        if (k // 2) % 2:  # both classes get both kinds
            write_dicom(root / "dcm" / c / f"{c}_{k:03d}.dcm", 4095 - stored, bits_stored=12,
                        photometric="MONOCHROME1", spacing=(0.5, 0.5))
        else:
            write_dicom(root / "dcm" / c / f"1.2.826.0.{k}", stored, bits_stored=12)
    write_unreadable_compressed(root / "dcm" / "normal" / "compressed.dcm")
    return root / "dcm", root / "png", classes


@pytest.fixture(scope="module")
def dicom_data(tmp_path_factory):
    return _dicom_dataset(tmp_path_factory.mktemp("dicomdata"))


def test_a_dicom_folder_is_a_data_set_like_its_png_twin(dicom_data):
    from napari_gradcam.data import ImageDataset

    dcm, png, classes = dicom_data
    a, b = scan_folder(dcm), scan_folder(png)
    assert a.classes == b.classes == classes and len(a) == len(b) == 16
    why = ("compressed.dcm is compressed as JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 "
           "[Selection Value 1]), which no installed DICOM decoder reads; install python-gdcm or pylibjpeg with "
           "pylibjpeg-libjpeg to read it.")
    assert [(p.name, reason) for p, reason in a.skipped] == [("compressed.dcm", why)]
    da = ImageDataset(a, 1, 32, [0.5], [0.25], cache=False)
    db = ImageDataset(b, 1, 32, [0.5], [0.25], cache=False)
    twin = {_number(p): j for j, p in enumerate(b.paths)}
    assert sorted(twin) == sorted(_number(p) for p in a.paths)
    for i, p in enumerate(a.paths):  # same picture, same tensor: the modality path and MONOCHROME1 undone
        j = twin[_number(p)]
        assert da[i][1] == db[j][1]
        np.testing.assert_allclose(da[i][0].numpy(), db[j][0].numpy(), atol=1e-5)
    # files named by UID are each their own patient (not grouped by the part before the last dot)
    assert len({it.group for it in a.items}) == 16


def _number(path) -> int:
    """k of ``normal_007.png``, ``normal_007.dcm`` and ``1.2.826.0.7``."""
    return int(path.stem.split("_")[-1]) if path.suffix in (".png", ".dcm") else int(path.name.rsplit(".", 1)[-1])


def test_training_and_evaluating_on_dicom_folders(dicom_data, tmp_path, torch_one_thread, capsys):
    import napari_gradcam as ng
    from napari_gradcam.cli import main
    from napari_gradcam.train import TrainConfig, run_training

    dcm, _, classes = dicom_data
    cfg = TrainConfig(data_dir=str(dcm), out=str(tmp_path / "m.safetensors"), image_size=32, epochs=2,
                      batch_size=8, lr=3e-3, augment=False, patience=None, seed=0, device="cpu",
                      group_pattern="none")
    result = run_training(cfg)
    assert result.epochs_done == 2 and result.best_path.is_file()
    bundle = ng.load_model(result.best_path, device="cpu")
    assert bundle.classes == classes
    one = next(p for p in sorted((dcm / "pneumonia").iterdir()) if p.suffix == ".dcm")
    expected = ng.predict(bundle, read_image(one))
    assert main(["predict", str(result.best_path), str(one)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(one)))
    np.testing.assert_allclose([float(v) for v in row.split(",")[2:]], expected, atol=1e-5)
    assert main(["explain", str(result.best_path), str(one), "--out", str(tmp_path / "h.tif"),
                 "--overlay", str(tmp_path / "o.png")]) == 0
    import tifffile

    heat = tifffile.imread(tmp_path / "h.tif")
    np.testing.assert_allclose(heat, ng.explain(bundle, read_image(one), method="gradcam").data, atol=1e-5)
    assert main(["evaluate", str(result.best_path), str(dcm)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^images\s+16$", out, re.M), out  # all 16 readable images were evaluated


# ----------------------------------------------------------------------------- declared size and deflate bombs
def _declaring(path, rows, cols, frames=None):
    """Rewrite a small file's header to declare another size (the pixel data stays small)."""
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    if frames:
        ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_declared_size_beyond_any_image_is_refused_before_decoding(tmp_path):
    path = _declaring(write_dicom(tmp_path / "huge.dcm", bright_square()), 40000, 40000)
    for read in (read_image, read_dicom):
        with pytest.raises(ImageError) as e:
            read(path)
        assert str(e.value).startswith("huge.dcm declares 40000 x 40000 pixels") and str(e.value).isprintable()
    assert "declares 40000 x 40000" in check_dicom(path)  # header only: a folder scan skips it


def test_a_declared_size_beyond_the_memory_available_is_refused(tmp_path, monkeypatch):
    """Rows x Columns x frames x samples x bits against the memory the machine has now: a file that
    would decode is refused when the machine has too little (here: 10 MB), before a pixel is decoded."""
    import napari_gradcam.resources as resources

    frames = np.stack([bright_square((256, 256))] * 4)  # 4 frames: 0.5 MB stored, ~5 MB to display
    path = write_dicom(tmp_path / "frames.dcm", frames, bits_stored=12)
    assert read_dicom(path).data.shape == (4, 256, 256)
    monkeypatch.setattr(resources, "available_memory", lambda: 10_000_000)  # 2.5 MB may be decoded
    with pytest.raises(ImageError) as e:
        read_dicom(path)
    assert str(e.value) == ("frames.dcm declares 256 x 256 pixels in 4 frames (5.8 MB to decode and display), "
                            "more than this machine can decode now (2.5 MB).")


def _deflated(path, pixels):
    path = write_dicom(path, pixels, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_deflated_file_reads_like_the_plain_one(tmp_path):
    plain = read_dicom(write_dicom(tmp_path / "plain.dcm", RAMP, bits_stored=12))
    deflated = read_dicom(_deflated(tmp_path / "deflated.dcm", RAMP))
    np.testing.assert_array_equal(deflated.data, plain.data)
    assert deflated.metadata["transfer_syntax"] == "Deflated Explicit VR Little Endian"


def test_a_deflate_bomb_is_refused_while_inflating(tmp_path, monkeypatch):
    """A few kB that inflate to 8 MB, on a machine that may decode 2 MB: refused with the inflation capped
    (zlib's max_length), one sentence, never the whole data set in memory."""
    import napari_gradcam.resources as resources

    path = _deflated(tmp_path / "bomb.dcm", np.zeros((2000, 2000), np.uint16))
    assert path.stat().st_size < 50_000
    monkeypatch.setattr(resources, "available_memory", lambda: 8_000_000)
    for read in (read_dicom, check_dicom):
        try:
            text = read(path)
        except ImageError as e:
            text = str(e)
        assert text.startswith("bomb.dcm is deflated to") and "inflates to more than this machine can decode " \
            "now (2.0 MB)" in text


def test_a_huge_dicom_is_one_line_on_the_command_line(tmp_path, model_file, capsys):
    from reliability_helpers import cli_error

    path = _declaring(write_dicom(tmp_path / "huge.dcm", bright_square()), 40000, 40000)
    cli_error(capsys, ["predict", model_file, path, "-q"], "huge.dcm declares 40000 x 40000 pixels")
    cli_error(capsys, ["explain", model_file, path, "--out", tmp_path / "h.tif"], "declares 40000 x 40000")
    assert not (tmp_path / "h.tif").exists()
