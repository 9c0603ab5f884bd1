"""Writing small DICOM files for the tests with pydicom (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Values that identify the (fictitious) patient, study and institution: none may reach the metadata.
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-7781234",
    "PatientBirthDate": "19700412",
    "PatientAddress": "12 Example Street",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "AccessionNumber": "ACC-99123",
    "InstitutionName": "St Example Hospital",
    "StationName": "XRAYROOM3",
    "ReferringPhysicianName": "Who^Doctor",
    "OperatorsName": "Tech^Tom",
    "StudyID": "STUDY-55",
}


def bright_square(shape=(48, 64), low=100, high=3000, dtype=np.uint16) -> np.ndarray:
    """Stored values: ``low`` background, ``high`` in a square in the top-left quadrant (rows 4-15, cols 6-19)."""
    arr = np.full(shape, low, dtype=dtype)
    arr[4:16, 6:20] = high
    return arr


def write_dicom(
    path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple | None = None,  # (centre, width) or ([c1, c2], [w1, w2]); optional third item: VOI LUT function
    voi_lut: np.ndarray | None = None,  # LUT entries for stored values first_mapped.. (first_mapped = 0)
    lut_bits: int = 16,
    lut_vr: str = "US",
    spacing: tuple[float, float] | None = None,
    imager_spacing: tuple[float, float] | None = None,
    identify: bool = True,
    syntax=None,
    part10: bool = True,
) -> Path:
    """Write ``pixels`` ((H, W) or (F, H, W) unsigned/signed ints; (H, W, 3) uint8 for RGB) as a DICOM file."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    path = Path(path)
    pixels = np.asarray(pixels)
    syntax = syntax or uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    if identify:
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8
    frames = pixels.shape[0] if (pixels.ndim == 3 and not rgb) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    bits_allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = slope if slope is not None else 1
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window[0], window[1]
        if len(window) > 2:
            ds.VOILUTFunction = window[2]
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, lut_bits]
        if lut_vr == "OW":
            item.add_new("LUTData", "OW", np.asarray(voi_lut, dtype="<u2").tobytes())
        else:
            item.add_new("LUTData", "US", [int(v) for v in voi_lut])
        item.LUTExplanation = "test curve"
        ds.VOILUTSequence = Sequence([item])
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax == uid.RLELossless:
        ds.compress(uid.RLELossless, encoding_plugin="pydicom")
    elif syntax != uid.ExplicitVRLittleEndian:
        meta.TransferSyntaxUID = syntax
    if part10:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare dataset, no preamble or file meta (implicit VR little endian)
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def write_jpeg_dicom(path, pixels: np.ndarray, quality: int = 95) -> Path:
    """An 8-bit MONOCHROME2 image stored as JPEG baseline (encoded by Pillow)."""
    import io

    from PIL import Image
    from pydicom import uid
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    path = write_dicom(path, np.asarray(pixels, dtype=np.uint8))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_unreadable_compressed(path, shape=(16, 16)) -> Path:
    """A file that claims JPEG Lossless (process 14), which pydicom + Pillow cannot decode."""
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    path = write_dicom(path, np.zeros(shape, dtype=np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1
    ds.save_as(path, enforce_file_format=True)
    return path
