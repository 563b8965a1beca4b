"""Image I/O: the real CR radiograph, DICOM display pipeline variants, PNG/JPEG, bad files."""

import json
import logging

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_windowing, get_decoder
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from cxrvlp.data.image_io import load_image, read_image_size, write_png
from cxrvlp.errors import DataError, ImageReadError, MissingFileError
from cxrvlp.synth.world import WorldConfig, generate_world


def smooth_image(height: int = 48, width: int = 40) -> np.ndarray:
    """A [0, 1] test picture with every level present: a gradient plus a bright disc."""
    rows, cols = np.mgrid[0:height, 0:width]
    gradient = (rows / (height - 1) + cols / (width - 1)) / 2
    disc = ((rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (width / 5) ** 2) * 0.3
    picture = np.clip(gradient * 0.8 + disc, 0.0, 1.0)
    picture[0, 0], picture[-1, -1] = 0.0, 1.0
    return picture


def write_dicom(
    path,
    stored: np.ndarray,
    *,
    bits: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
):
    """A minimal uncompressed CR file; ``stored`` is (H, W) or (frames, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in rescale)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first_mapped, table = voi_lut
        item = pydicom.Dataset()
        # Both tags have an ambiguous VR (US or SS / US or OW): name it.
        item.add_new(0x00283002, "US", [len(table), first_mapped, 16])  # LUTDescriptor
        item.add_new(0x00283006, "US", [int(v) for v in table])  # LUTData
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def levels(picture: np.ndarray, bits: int) -> np.ndarray:
    return np.round(picture * ((1 << bits) - 1)).astype(np.int64)


# ---- the real chest radiograph ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_radiograph():
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None, "pydicom-data must be installed (it ships RG1_UNCR.dcm)"
    return path, load_image(path)


def test_real_cr_radiograph_shows_dark_lungs_and_bright_mediastinum(real_radiograph):
    path, image = real_radiograph
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == (
        "MONOCHROME1"
    )
    assert image.shape == (1955, 1841) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    height, width = image.shape

    # Upper half of the chest, where both lungs flank the mediastinum and spine.
    rows = slice(int(0.2 * height), int(0.5 * height))

    def band(left: float, right: float) -> float:
        return float(image[rows, int(left * width) : int(right * width)].mean())

    right_lung, mediastinum, left_lung = band(0.15, 0.32), band(0.45, 0.55), band(0.62, 0.8)
    assert mediastinum > right_lung + 0.15
    assert mediastinum > left_lung + 0.15
    assert read_image_size(path) == (1955, 1841)


# ---- DICOM display pipeline ------------------------------------------------------------------


def test_monochrome1_and_monochrome2_of_the_same_pixels_load_alike(tmp_path):
    picture = smooth_image()
    stored = levels(picture, 14)
    write_dicom(tmp_path / "m2.dcm", stored, bits=14)
    write_dicom(tmp_path / "m1.dcm", (1 << 14) - 1 - stored, bits=14, photometric="MONOCHROME1")
    mono2, mono1 = load_image(tmp_path / "m2.dcm"), load_image(tmp_path / "m1.dcm")
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, picture, atol=0.5 / (1 << 14) + 1e-6)


@pytest.mark.parametrize(("bits", "signed"), [(12, False), (14, False), (16, False), (12, True)])
def test_bits_stored_without_window_use_the_stored_range(tmp_path, bits, signed):
    picture = smooth_image()
    stored = levels(picture, bits) - ((1 << (bits - 1)) if signed else 0)
    write_dicom(tmp_path / "x.dcm", stored, bits=bits, signed=signed)
    np.testing.assert_allclose(
        load_image(tmp_path / "x.dcm"), picture, atol=0.5 / (1 << bits) * 1.01
    )


def test_data_filling_a_sliver_of_the_stored_range_are_stretched(tmp_path):
    picture = smooth_image()
    # 12-bit-like data in a file that claims 16 stored bits: the stored range would be flat.
    write_dicom(tmp_path / "x.dcm", 1000 + levels(picture, 11), bits=16)
    np.testing.assert_allclose(load_image(tmp_path / "x.dcm"), picture, atol=0.5 / 2047 + 1e-6)


def test_rescale_slope_and_intercept_without_window(tmp_path):
    picture = smooth_image()
    write_dicom(tmp_path / "x.dcm", levels(picture, 12), bits=12, rescale=(0.5, -1024))
    np.testing.assert_allclose(load_image(tmp_path / "x.dcm"), picture, atol=2e-4)


@pytest.mark.parametrize("function", [None, "LINEAR_EXACT", "SIGMOID"])
def test_window_after_rescale_matches_the_dicom_formula(tmp_path, function):
    stored = levels(smooth_image(), 12)
    # A window narrower than the data: values clip at both ends (for the linear functions).
    ds = write_dicom(
        tmp_path / "x.dcm",
        stored,
        bits=12,
        rescale=(2.0, -1000),
        window=(3000.0, 2000.0),
        voi_function=function,
    )
    image = load_image(tmp_path / "x.dcm")
    # pydicom's own windowing (its output spans the rescaled stored range) as the reference.
    rescaled = stored * 2.0 - 1000
    low, high = -1000.0, 4095 * 2.0 - 1000
    expected = (apply_windowing(rescaled, ds) - low) / (high - low)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    if function != "SIGMOID":
        assert image.min() == 0.0 and image.max() == 1.0
        assert (image == 0.0).any() and (image == 1.0).any() and ((image > 0) & (image < 1)).any()


def test_voi_lut_sequence_is_applied_and_scaled_to_its_output_range(tmp_path):
    stored = levels(smooth_image(), 12)
    table = np.round(np.sqrt(np.arange(4096) / 4095) * 4000).astype(np.uint16)
    write_dicom(tmp_path / "x.dcm", stored, bits=12, window=(100, 10), voi_lut=(0, table))
    np.testing.assert_allclose(load_image(tmp_path / "x.dcm"), table[stored] / 4000, atol=1e-6)


def test_multi_frame_uses_the_first_frame_and_warns(tmp_path, caplog):
    picture = smooth_image()
    frames = np.stack([levels(picture, 12), levels(1.0 - picture, 12)])
    write_dicom(tmp_path / "cine.dcm", frames, bits=12)
    with caplog.at_level(logging.WARNING, logger="cxrvlp.data.image_io"):
        image = load_image(tmp_path / "cine.dcm")
    np.testing.assert_allclose(image, picture, atol=1e-3)
    assert "cine.dcm" in caplog.text and "2 frames" in caplog.text


def test_compressed_dicom_decodes_or_names_the_missing_decoder():
    path = get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    if get_decoder(JPEGLosslessSV1).is_available:
        assert load_image(path).ndim == 2
        return
    with pytest.raises(ImageReadError, match="no decoder for it is installed") as error:
        load_image(path)
    assert "JPGLosslessP14SV1_1s_1f_8b.dcm" in str(error.value)
    assert "pylibjpeg" in str(error.value)


def test_rgb_jpeg_dicom_becomes_grayscale():
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")  # JPEG baseline: Pillow decodes it
    image = load_image(path)
    assert image.shape == (100, 100) and image.dtype == np.float32
    assert image.max() > image.min()


@pytest.fixture(scope="module")
def rsna_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    # 16 studies: enough for the exporter to write MONOCHROME1 as well as MONOCHROME2 files.
    config = WorldConfig(out=out, studies=16, image_size=96, downstream_fraction=1.0)
    _, studies = generate_world(config, cohorts=("rsna",), progress=False)
    rows = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    return out, rows, studies


def test_every_rsna_dicom_variant_displays_the_rendered_image(rsna_world):
    out, rows, studies = rsna_world
    assert len(rows) == len(studies) >= 8
    photometrics, windowed = set(), set()
    for row, study in zip(rows, studies, strict=True):
        path = out / row["path"]
        header = pydicom.dcmread(path, stop_before_pixels=True)
        photometrics.add(header.PhotometricInterpretation)
        windowed.add("WindowCenter" in header)
        image = load_image(path)
        assert image.shape == study.frontal.shape == (row["height"], row["width"])
        # Stored-bit quantisation plus the DICOM LINEAR window's one-level offset.
        np.testing.assert_allclose(image, study.frontal, atol=2e-3, err_msg=str(path))
        spine = box_mean(image, row["regions"]["spine"])
        lungs = (box_mean(image, row["regions"][side]) for side in ("right lung", "left lung"))
        assert all(spine > lung for lung in lungs)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and windowed == {True, False}


def box_mean(image: np.ndarray, box: list[float]) -> float:
    x1, y1, x2, y2 = (round(v) for v in box)
    return float(image[y1:y2, x1:x2].mean())


# ---- PNG and JPEG ----------------------------------------------------------------------------


def test_8_and_16_bit_png_agree_up_to_quantisation(tmp_path):
    picture = smooth_image()
    write_png(tmp_path / "8.png", picture, bits=8)
    write_png(tmp_path / "16.png", picture, bits=16)
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    eight, sixteen = load_image(tmp_path / "8.png"), load_image(tmp_path / "16.png")
    assert eight.dtype == sixteen.dtype == np.float32
    np.testing.assert_allclose(sixteen, picture, atol=0.5 / 65535 + 1e-7)
    np.testing.assert_allclose(eight, picture, atol=0.5 / 255 + 1e-7)
    np.testing.assert_allclose(eight, sixteen, atol=0.5 / 255 + 1e-6)
    assert read_image_size(tmp_path / "16.png") == picture.shape


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_png_modes_load_as_their_gray(tmp_path, mode):
    gray = np.round(smooth_image() * 255).astype(np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "x.png")
    np.testing.assert_allclose(load_image(tmp_path / "x.png"), gray / 255, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_gray_and_rgb(tmp_path, mode):
    picture = smooth_image(96, 80)
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).convert(mode).save(
        tmp_path / "x.jpg", quality=95
    )
    image = load_image(tmp_path / "x.jpg")
    assert image.shape == (96, 80) and image.dtype == np.float32
    assert np.abs(image - picture).mean() < 0.01
    assert read_image_size(tmp_path / "x.jpg") == (96, 80)


# ---- bad input -------------------------------------------------------------------------------


def _valid_jpeg(tmp_path) -> bytes:
    Image.fromarray(np.round(smooth_image(96, 80) * 255).astype(np.uint8)).save(
        tmp_path / "ok.jpg", quality=95
    )
    return (tmp_path / "ok.jpg").read_bytes()


def _valid_dicom(tmp_path) -> bytes:
    write_dicom(tmp_path / "ok.dcm", levels(smooth_image(), 12), bits=12)
    return (tmp_path / "ok.dcm").read_bytes()


@pytest.mark.parametrize(
    ("name", "make_bytes", "reason"),
    [
        ("random.jpg", lambda tmp: np.random.default_rng(0).bytes(4000), "not a readable"),
        ("cut.jpg", lambda tmp: _valid_jpeg(tmp)[: len(_valid_jpeg(tmp)) // 2], "truncated"),
        ("cut.dcm", lambda tmp: _valid_dicom(tmp)[: len(_valid_dicom(tmp)) // 2], "pixel data"),
        ("random.dcm", lambda tmp: np.random.default_rng(1).bytes(4000), "DICOM"),
        ("empty.png", lambda tmp: b"", "empty"),
    ],
)
def test_unreadable_files_raise_an_error_naming_file_and_fix(tmp_path, name, make_bytes, reason):
    path = tmp_path / name
    path.write_bytes(make_bytes(tmp_path))
    with pytest.raises(ImageReadError, match=reason) as error:
        load_image(path)
    assert isinstance(error.value, DataError) and error.value.path == path
    assert name in str(error.value) and "Re-download" in str(error.value)


def test_missing_file_raises_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match=r"nowhere\.png") as error:
        load_image(tmp_path / "nowhere.png")
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(MissingFileError):
        read_image_size(tmp_path / "nowhere.dcm")
