"""Reading an uploaded radiograph safely: every bad upload becomes an `UploadError` (4xx).

What is checked, in order, and why:

- Size while reading (`read_limited`): the body is read in 1 MiB chunks and refused (413) as
  soon as it passes `UploadLimits.max_bytes`, so an oversized upload is never held in memory.
  An empty upload is a 400.
- Type from the content, never from the file name or the client's content type (they are
  often wrong): DICOM ("DICM" at offset 128, or a file that starts with its group-0002 file
  meta header), PNG or JPEG by signature; anything else is a 415.
- Pixel count and smallest side from the header, before any pixel is decoded: a few kilobytes
  can declare gigapixels (a decompression bomb, 413); a thumbnail is not a radiograph (422).
  Pillow's own bomb limit (`Image.MAX_IMAGE_PIXELS`) is honoured as a 413 too.
- DICOM content: a Modality (0008,0060) other than CR or DX (a CT, an ultrasound, a report)
  and a file without PixelData (7FE0,0010) are 422s; a missing Modality is accepted, as many
  exported radiographs lack it. Compression no installed decoder reads is a 422.
- Decoding goes through `cxrvlp.data.image_io`, so an upload gives exactly the pixels
  `load_image` gives for the same file; truncated or corrupt data are a 400.

Status codes: 400 broken bytes, 413 too big (bytes or pixels: a resource limit, and the fix is
the same, send a smaller image), 415 not a DICOM, PNG or JPEG, 422 a readable file of an
accepted type whose content the model cannot use. Nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import pydicom
from PIL import Image

from cxrvlp.data.image_io import (
    check_dicom_decoder,
    dicom_display_pixels,
    pillow_display_pixels,
    read_dicom_bytes,
)
from cxrvlp.errors import ImageReadError

log = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
ACCEPTED_TYPES = "DICOM, PNG or JPEG"
_CHUNK_BYTES = 1 << 20
_NAME_CHARS = 120  # a client's file name is echoed in messages: keep it short
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICOM_MAGIC, _DICOM_MAGIC_OFFSET = b"DICM", 128
_FILE_META_VRS = (b"UL", b"OB", b"UI")  # the VRs a preamble-less file's first element can have
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# What a malformed header that got past the parser raises while its values are used.
_MALFORMED_VALUES = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
    ZeroDivisionError,
    EOFError,
    struct.error,
)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 50 * 2**20
    max_pixels: int = 80_000_000  # decompression-bomb guard, checked from the header
    min_side: int = 64  # below this an image is too small to be a radiograph


DEFAULT_LIMITS = UploadLimits()


class UploadError(Exception):
    """An upload the service refuses: HTTP status, a stable machine code, a sentence to act on."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, eq=False)
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], bone bright: the `load_image` convention
    kind: str  # "dicom" | "png" | "jpeg"
    dicom: pydicom.Dataset | None  # the header of a DICOM input, its pixel data removed
    filename: str


class AsyncReadable(Protocol):
    """What `read_limited` needs of an upload: Starlette's (FastAPI's) `UploadFile` has it."""

    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(upload: AsyncReadable, limits: UploadLimits = DEFAULT_LIMITS) -> bytes:
    """The upload's bytes, read in chunks; 413 as soon as they pass ``limits.max_bytes``."""
    declared = getattr(upload, "size", None)  # Starlette counts the part while parsing
    if isinstance(declared, int) and declared > limits.max_bytes:
        raise _too_large(limits)
    chunks, total = [], 0
    while True:
        # Never ask for more than one byte past the limit: that byte proves it is too large.
        chunk = await upload.read(min(_CHUNK_BYTES, limits.max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > limits.max_bytes:
            raise _too_large(limits)
        chunks.append(chunk)
    if total == 0:
        raise UploadError(400, "empty", "The upload is empty (0 bytes); attach the image file.")
    return b"".join(chunks)


def detect_kind(data: bytes) -> str | None:
    """The kind ("dicom", "png" or "jpeg") read from the leading bytes; None for any other."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
        return "dicom"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    # No preamble: only a file that opens with its file meta group (0002,xxxx), explicit VR
    # little endian as the standard requires; it names the transfer syntax the pixels need.
    if data[:2] == b"\x02\x00" and data[4:6] in _FILE_META_VRS:
        return "dicom"
    return None


def decode_upload(
    data: bytes, filename: str, limits: UploadLimits = DEFAULT_LIMITS
) -> DecodedImage:
    """Decode an uploaded DICOM, PNG or JPEG, checked first; UploadError (4xx) for bad input."""
    name = _short_name(filename)
    if not data:
        raise UploadError(400, "empty", "The upload is empty (0 bytes); attach the image file.")
    if len(data) > limits.max_bytes:
        raise _too_large(limits)
    kind = detect_kind(data)
    if kind is None:
        raise UploadError(
            415,
            "unsupported_type",
            f"The upload{f' ({name})' if name else ''} is not a {ACCEPTED_TYPES} file; send the"
            f" radiograph as {ACCEPTED_TYPES} (the type is read from the file's content, not"
            " its name or content type).",
        )
    try:
        return _DECODERS[kind](data, name, limits)
    except _MALFORMED_VALUES as error:
        log.warning("upload %r (%s) has values that cannot be decoded", name, kind, exc_info=True)
        raise UploadError(
            400,
            "corrupt",
            f"The {_LABELS[kind]} file holds values that cannot be decoded"
            f" ({type(error).__name__}: {error}); export it again and send the new file.",
        ) from error


# ---- PNG and JPEG ----------------------------------------------------------------------------


def _decode_pillow(data: bytes, name: str, limits: UploadLimits, *, kind: str) -> DecodedImage:
    label = _LABELS[kind]
    try:
        picture = Image.open(io.BytesIO(data), formats=[label])
    except Image.DecompressionBombError as error:
        raise UploadError(
            413,
            "too_many_pixels",
            f"The {label} header declares more pixels than this service decodes ({error});"
            " downscale the image and send it again.",
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise _corrupt(label, f"its header cannot be read ({error})") from error
    with picture:
        width, height = picture.size
        pillow_limit = Image.MAX_IMAGE_PIXELS  # above it Pillow has already warned of a bomb
        max_pixels = min(limits.max_pixels, pillow_limit or limits.max_pixels)
        _check_size(height, width, max_pixels, limits.min_side)
        try:
            pixels = pillow_display_pixels(picture, name or "upload")
        except ImageReadError as error:
            raise _corrupt(label, error.reason) from error
    return DecodedImage(pixels=pixels, kind=kind, dicom=None, filename=name)


# ---- DICOM -----------------------------------------------------------------------------------


def _decode_dicom(data: bytes, name: str, limits: UploadLimits) -> DecodedImage:
    try:
        dataset = read_dicom_bytes(data, name or "upload")
    except ImageReadError as error:
        raise _corrupt("DICOM", error.reason) from error
    modality = str(dataset.get("Modality", "") or "").strip()
    if modality and modality.upper() not in RADIOGRAPH_MODALITIES:
        raise UploadError(
            422,
            "not_a_radiograph",
            f"Modality (0008,0060) is {modality!r}; the model reads radiographs"
            f" ({' or '.join(sorted(RADIOGRAPH_MODALITIES))}). Send a chest radiograph.",
        )
    if "PixelData" not in dataset:
        raise UploadError(
            422,
            "no_pixel_data",
            "The DICOM file has no PixelData (7FE0,0010): it holds no image (a report or a"
            " header-only export) or was cut short. Send the DICOM image itself.",
        )
    if "Rows" not in dataset or "Columns" not in dataset:
        raise _corrupt(
            "DICOM", "its header has no Rows (0028,0010) or Columns (0028,0011), the image size"
        )
    _check_size(int(dataset.Rows), int(dataset.Columns), limits.max_pixels, limits.min_side)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _MONOCHROME and int(dataset.get("SamplesPerPixel", 1) or 1) != 3:
        raise UploadError(
            422,
            "unsupported_photometric",
            f"PhotometricInterpretation (0028,0004) is {photometric!r}; the service reads"
            " MONOCHROME1, MONOCHROME2 and three-sample colour. Send a MONOCHROME2 DICOM, a PNG"
            " or a JPEG.",
        )
    try:
        check_dicom_decoder(dataset, name or "upload")
    except ImageReadError as error:
        raise UploadError(
            422,
            "unsupported_compression",
            f"The DICOM pixels cannot be decoded here: {error.reason} (Transfer Syntax UID"
            " (0002,0010)). Send an uncompressed DICOM, a PNG or a JPEG.",
        ) from error
    try:
        pixels = dicom_display_pixels(dataset, name or "upload")
    except ImageReadError as error:
        raise _corrupt("DICOM", f"{error.reason} (PixelData (7FE0,0010))") from error
    del dataset.PixelData  # the header is kept for the report; the decoded pixels are enough
    return DecodedImage(pixels=pixels, kind="dicom", dicom=dataset, filename=name)


# ---- shared ----------------------------------------------------------------------------------

_LABELS = {"dicom": "DICOM", "png": "PNG", "jpeg": "JPEG"}
_DECODERS: dict[str, Callable[[bytes, str, UploadLimits], DecodedImage]] = {
    "dicom": _decode_dicom,
    "png": partial(_decode_pillow, kind="png"),
    "jpeg": partial(_decode_pillow, kind="jpeg"),
}


def _check_size(height: int, width: int, max_pixels: int, min_side: int) -> None:
    pixels = height * width
    if pixels > max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"The image is {width} x {height} = {pixels:,} pixels, over the limit of"
            f" {max_pixels:,}; downscale it and send it again.",
        )
    if min(height, width) < min_side:
        raise UploadError(
            422,
            "too_small",
            f"The image is {width} x {height} pixels, too small to be a radiograph (at least"
            f" {min_side} on each side); send the original image, not a thumbnail.",
        )


def _too_large(limits: UploadLimits) -> UploadError:
    return UploadError(
        413,
        "too_large",
        f"The upload is larger than {limits.max_bytes / 2**20:g} MiB; send one radiograph of"
        " at most that size (downscale it, or send it as PNG or JPEG).",
    )


def _corrupt(label: str, reason: str) -> UploadError:
    return UploadError(
        400,
        "corrupt",
        f"The {label} file cannot be decoded: {reason}. It is damaged or incomplete: send the"
        " complete file again.",
    )


def _short_name(filename: str | None) -> str:
    """The client's file name without folders or control characters, cut to a sane length."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(char for char in base if char.isprintable())[:_NAME_CHARS]
