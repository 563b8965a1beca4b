"""Uploads: every accepted kind decodes as `load_image` does; every bad upload gets its 4xx."""

import asyncio
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from starlette.datastructures import UploadFile

from cxrvlp.data.image_io import load_image
from cxrvlp.serve.uploads import (
    DecodedImage,
    UploadError,
    UploadLimits,
    decode_upload,
    detect_kind,
    read_limited,
)
from test_data_image_io import levels, smooth_image

LIMITS = UploadLimits()


def upload_image(height: int = 96, width: int = 80) -> np.ndarray:
    """The image I/O tests' picture, at least the 64 px a radiograph upload needs."""
    return smooth_image(height, width)


def pillow_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    picture = Image.fromarray(array)
    if mode is not None:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def gray8(height: int = 96, width: int = 80) -> np.ndarray:
    return levels(upload_image(height, width), 8).astype(np.uint8)


def dicom_dataset(
    stored: np.ndarray | None = None,
    *,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    modality: str | None = "CR",
    window: tuple[float, float] | None = None,
) -> pydicom.Dataset:
    """A minimal uncompressed radiograph; no pixel data when ``stored`` is None."""
    stored = levels(upload_image(), bits) if stored is None else stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def dicom_bytes(ds: pydicom.Dataset, *, preamble: bool = True) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (CRC fixed) declares another size: a decompression bomb."""
    data = bytearray(pillow_bytes(gray8(64, 64)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ---- accepted kinds decode exactly as load_image ---------------------------------------------


ACCEPTED = {
    "gray.png": lambda: pillow_bytes(gray8()),
    "16bit.png": lambda: pillow_bytes(levels(upload_image(), 16).astype(np.uint16)),
    "rgb.png": lambda: pillow_bytes(gray8(), "RGB"),
    "rgba.png": lambda: pillow_bytes(gray8(), "RGBA"),
    "palette.png": lambda: pillow_bytes(gray8(), "P"),
    "gray.jpg": lambda: pillow_bytes(gray8(), fmt="JPEG"),
    "rgb.jpg": lambda: pillow_bytes(gray8(), "RGB", fmt="JPEG"),
    "mono2.dcm": lambda: dicom_bytes(dicom_dataset()),
    "mono1.dcm": lambda: dicom_bytes(dicom_dataset(photometric="MONOCHROME1")),
    "windowed.dcm": lambda: dicom_bytes(dicom_dataset(window=(1500, 2000))),
    "no_modality.dcm": lambda: dicom_bytes(dicom_dataset(modality=None)),
    "dx.dcm": lambda: dicom_bytes(dicom_dataset(modality="DX")),
    "no_preamble.dcm": lambda: dicom_bytes(dicom_dataset(), preamble=False),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_each_accepted_kind_decodes_to_the_pixels_load_image_gives(tmp_path, name):
    data = ACCEPTED[name]()
    (tmp_path / name).write_bytes(data)
    decoded = decode_upload(data, name, LIMITS)
    assert isinstance(decoded, DecodedImage) and decoded.filename == name
    assert decoded.kind == {".png": "png", ".jpg": "jpeg", ".dcm": "dicom"}[name[-4:]]
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == (96, 80)
    np.testing.assert_allclose(decoded.pixels, load_image(tmp_path / name), rtol=0, atol=0)
    if decoded.kind == "dicom":
        assert decoded.dicom is not None and "PixelData" not in decoded.dicom
        assert decoded.dicom.Rows == 96
    else:
        assert decoded.dicom is None


def test_the_real_cr_radiograph_decodes_as_from_disk():
    path = get_testdata_file("RG1_UNCR.dcm")  # MONOCHROME1, 1955 x 1841
    with open(path, "rb") as stream:
        decoded = decode_upload(stream.read(), "RG1_UNCR.dcm", LIMITS)
    assert decoded.kind == "dicom" and decoded.dicom.Modality == "CR"
    np.testing.assert_allclose(decoded.pixels, load_image(path), rtol=0, atol=0)


def test_monochrome1_is_inverted():
    stored = levels(upload_image(), 12)
    mono2 = decode_upload(dicom_bytes(dicom_dataset(stored)), "m2.dcm", LIMITS).pixels
    mono1_ds = dicom_dataset(4095 - stored, photometric="MONOCHROME1")
    mono1 = decode_upload(dicom_bytes(mono1_ds), "m1.dcm", LIMITS).pixels
    np.testing.assert_allclose(mono2, stored / 4095, atol=1e-6)
    np.testing.assert_allclose(mono1, stored / 4095, atol=1e-6)


def test_16_bit_png_is_scaled_by_65535_and_colour_becomes_its_gray():
    values = np.arange(96 * 80, dtype=np.uint16).reshape(96, 80) * 8 + 7
    sixteen = decode_upload(pillow_bytes(values), "x.png", LIMITS).pixels
    np.testing.assert_allclose(sixteen, values / 65535, atol=1e-7)
    gray = gray8()
    for mode in ("RGB", "RGBA"):
        colour = decode_upload(pillow_bytes(gray, mode), "x.png", LIMITS).pixels
        np.testing.assert_allclose(colour, gray / 255, atol=1e-7)


def test_the_type_comes_from_the_bytes_not_the_name():
    png = pillow_bytes(gray8())
    assert decode_upload(png, "scan.dcm", LIMITS).kind == "png"
    assert decode_upload(dicom_bytes(dicom_dataset()), "scan.png", LIMITS).kind == "dicom"
    assert decode_upload(pillow_bytes(gray8(), fmt="JPEG"), "scan.png", LIMITS).kind == "jpeg"
    assert detect_kind(b"hello") is None and detect_kind(b"") is None
    assert detect_kind(b"\x08\x00\x16\x00\x1a\x00\x00\x00") is None  # no file meta: not sniffed


def test_the_client_file_name_is_shortened_to_its_base_name():
    decoded = decode_upload(pillow_bytes(gray8()), "C:\\scans\\../x\nray.png", LIMITS)
    assert decoded.filename == "xray.png"


# ---- reading with a size limit ---------------------------------------------------------------


class CountingBytesIO(io.BytesIO):
    """A body that counts the bytes handed out, to show reading stopped early."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.handed_out = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.handed_out += len(chunk)
        return chunk


def test_an_oversized_upload_is_refused_while_reading():
    limits = UploadLimits(max_bytes=3 * 2**20)
    body = CountingBytesIO(bytes(40 * 2**20))
    with pytest.raises(UploadError) as error:
        asyncio.run(read_limited(UploadFile(body, filename="big.dcm"), limits))
    assert (error.value.status, error.value.code) == (413, "too_large")
    assert "3 MiB" in error.value.message
    assert body.handed_out == limits.max_bytes + 1  # one byte past the limit, not 40 MiB


def test_a_declared_size_over_the_limit_is_refused_before_reading():
    body = CountingBytesIO(bytes(100))
    upload = UploadFile(body, size=10 * 2**20, filename="big.png")
    with pytest.raises(UploadError, match="larger than 1 MiB") as error:
        asyncio.run(read_limited(upload, UploadLimits(max_bytes=2**20)))
    assert error.value.status == 413 and body.handed_out == 0


def test_an_upload_within_the_limit_is_read_whole_in_chunks():
    data = np.random.default_rng(0).bytes(2 * 2**20 + 123)
    body = CountingBytesIO(data)
    assert asyncio.run(read_limited(UploadFile(body), UploadLimits(max_bytes=len(data)))) == data


def test_an_empty_upload_is_a_400():
    for read in (
        lambda: asyncio.run(read_limited(UploadFile(io.BytesIO(b"")), LIMITS)),
        lambda: decode_upload(b"", "x.png", LIMITS),
    ):
        with pytest.raises(UploadError, match="empty") as error:
            read()
        assert (error.value.status, error.value.code) == (400, "empty")


# ---- bad input: status, code and a message to act on -----------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def without_pixel_data() -> bytes:
    ds = dicom_dataset()
    del ds.PixelData
    return dicom_bytes(ds)


def huge_dicom_header() -> bytes:
    ds = dicom_dataset()
    ds.Rows, ds.Columns = 9000, 9000  # the pixel data stays small: never decoded
    return dicom_bytes(ds)


def palette_dicom() -> bytes:
    return dicom_bytes(dicom_dataset(photometric="PALETTE COLOR"))


def unreadable_window() -> bytes:
    ds = dicom_dataset()
    ds.add_new(0x00281050, "DS", "40")  # WindowCenter
    ds.add_new(0x00281051, "LO", "wide")  # WindowWidth with a value no number reads
    return dicom_bytes(ds)


BAD = {
    # name: (bytes, limits, status, code, words the message must contain)
    "text.png": (lambda: b"just some text\n" * 20, LIMITS, 415, "unsupported_type",
                 ["DICOM, PNG or JPEG", "content"]),
    "zip.dcm": (lambda: b"PK\x03\x04" + bytes(300), LIMITS, 415, "unsupported_type", ["DICOM"]),
    "cut.png": (lambda: truncated(pillow_bytes(gray8())), LIMITS, 400, "corrupt",
                ["PNG", "truncated", "send"]),
    "cut.jpg": (lambda: truncated(pillow_bytes(gray8(), fmt="JPEG")), LIMITS, 400, "corrupt",
                ["JPEG", "truncated", "send"]),
    "header_only.png": (lambda: pillow_bytes(gray8())[:20], LIMITS, 400, "corrupt",
                        ["PNG", "header"]),
    "no_pixels.dcm": (without_pixel_data, LIMITS, 422, "no_pixel_data",
                      ["PixelData (7FE0,0010)", "Send"]),
    "ct.dcm": (lambda: dicom_bytes(dicom_dataset(modality="CT")), LIMITS, 422,
               "not_a_radiograph", ["Modality (0008,0060)", "'CT'", "CR or DX"]),
    "cut.dcm": (lambda: truncated(dicom_bytes(dicom_dataset())), LIMITS, 400, "corrupt",
                ["(7FE0,0010)", "less than expected", "send"]),
    "small.png": (lambda: pillow_bytes(gray8(32, 32)), LIMITS, 422, "too_small",
                  ["32 x 32", "at least 64"]),
    "small.dcm": (lambda: dicom_bytes(dicom_dataset(levels(upload_image(32, 200), 12))),
                  LIMITS, 422, "too_small", ["200 x 32"]),
    # Too many pixels is a 413, as too many bytes: a resource limit of the service, and the
    # fix is the same (send a smaller image); 422 is kept for content the model cannot use.
    "bomb.png": (lambda: png_with_size(9000, 9000), LIMITS, 413, "too_many_pixels",
                 ["81,000,000", "80,000,000", "downscale"]),
    "pillow_bomb.png": (lambda: png_with_size(100_000, 100_000), LIMITS, 413,
                        "too_many_pixels", ["decompression bomb", "downscale"]),
    "bomb.dcm": (huge_dicom_header, LIMITS, 413, "too_many_pixels", ["81,000,000"]),
    "limit.png": (lambda: pillow_bytes(gray8()), UploadLimits(max_pixels=5000), 413,
                  "too_many_pixels", ["7,680", "5,000"]),
    "palette.dcm": (palette_dicom, LIMITS, 422, "unsupported_photometric",
                    ["(0028,0004)", "PALETTE COLOR"]),
    "window.dcm": (unreadable_window, LIMITS, 400, "corrupt", ["DICOM", "ValueError"]),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_bad_upload_gets_its_status_code_and_message(name):
    make, limits, status, code, words = BAD[name]
    with pytest.raises(UploadError) as error:
        decode_upload(make(), name, limits)
    assert (error.value.status, error.value.code) == (status, code), error.value.message
    assert str(error.value) == error.value.message
    for word in words:
        assert word in error.value.message, (word, error.value.message)


def test_pillow_bomb_warning_is_a_413_not_a_warning_passed_by(monkeypatch):
    # Above Image.MAX_IMAGE_PIXELS Pillow only warns (an error above twice that): a service
    # configured with a higher max_pixels still refuses what Pillow calls a bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(UploadError) as error:
        decode_upload(pillow_bytes(gray8()), "x.png", UploadLimits(max_pixels=10**9))
    assert (error.value.status, error.value.code) == (413, "too_many_pixels")


def test_compressed_dicom_without_a_decoder_is_a_422_naming_the_transfer_syntax():
    ds = dicom_dataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])  # a broken code stream
    with pytest.raises(UploadError) as error:
        decode_upload(dicom_bytes(ds), "j2k.dcm", LIMITS)
    if get_decoder(JPEG2000Lossless).is_available:
        assert (error.value.status, error.value.code) == (400, "corrupt")
    else:
        assert (error.value.status, error.value.code) == (422, "unsupported_compression")
        assert "(0002,0010)" in error.value.message and "JPEG 2000" in error.value.message
