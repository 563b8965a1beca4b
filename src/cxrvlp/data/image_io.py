"""Reading chest radiographs from JPEG, 8/16-bit PNG and DICOM into one pixel convention.

Every image comes out as float32 (H, W) in [0, 1] as a radiologist sees it: dense tissue
(bone, mediastinum) bright, air dark. DICOM pixels go through the standard display pipeline:
Modality LUT (or RescaleSlope/Intercept), then the VOI LUT or the first window (or, with
neither, the range the stored bits can hold, unless the data fill only a sliver of it), then
MONOCHROME1 is inverted. Bytes already in memory (a service's uploads) go through the same
code: `read_dicom_bytes` then `dicom_display_pixels`, or `pillow_display_pixels`.
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

from cxrvlp.errors import ImageReadError, MissingFileError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_DICOM_MAGIC_OFFSET = 128
_CORRUPT_FIX = "Re-download or re-extract this file, or leave it out: a reader counts and skips it"
_MIN_USED_SHARE = 16  # data spanning under 1/16 of the stored range: BitsStored is wrong
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")


def load_image(path: str | Path) -> np.ndarray:
    """Pixels as float32 (H, W) in [0, 1], displayed-radiograph convention (bone bright).

    Raises MissingFileError for a missing file and ImageReadError naming the file and the fix
    when it cannot be decoded.
    """
    path = _require_file(path)
    return _display(_load_dicom(path) if _is_dicom(path) else _load_pillow(path))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, read from its header without decoding the pixels."""
    path = _require_file(path)
    if _is_dicom(path):
        dataset = _read_dicom_dataset(path, stop_before_pixels=True)
        if "Rows" not in dataset or "Columns" not in dataset:
            raise ImageReadError(path, "the DICOM header has no Rows/Columns", _CORRUPT_FIX)
        return int(dataset.Rows), int(dataset.Columns)
    try:
        with Image.open(path) as picture:
            width, height = picture.size
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"not a readable image ({error})", _CORRUPT_FIX) from error
    return height, width


def read_dicom_bytes(data: bytes, source_name: str) -> pydicom.Dataset:
    """A DICOM data set parsed from bytes in memory exactly as `load_image` parses a file.

    Raises ImageReadError naming ``source_name`` when pydicom cannot parse it.
    """
    return _parse_dicom(io.BytesIO(data), source_name)


def check_dicom_decoder(dataset: pydicom.Dataset, source_name: str) -> None:
    """Raise ImageReadError when no installed decoder reads the pixels' compression."""
    _check_decoder(source_name, dataset)


def dicom_display_pixels(dataset: pydicom.Dataset, source_name: str) -> np.ndarray:
    """The first frame of a parsed DICOM data set as `load_image` returns it: float32 (H, W).

    Raises ImageReadError naming ``source_name`` for missing, undecodable or unsupported pixels.
    """
    return _display(_dicom_pixels(dataset, source_name))


def pillow_display_pixels(picture: Image.Image, source_name: str) -> np.ndarray:
    """An opened (not yet loaded) Pillow image decoded as `load_image` decodes a PNG or JPEG.

    Raises ImageReadError naming ``source_name`` for truncated or corrupt data.
    """
    with _pillow_errors(source_name):
        picture.load()
        return _display(_pillow_to_gray(picture))


def write_png(path: str | Path, image: np.ndarray, bits: int = 8) -> None:
    """Save (H, W) pixels in [0, 1] as an 8- or 16-bit grayscale PNG."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = (1 << bits) - 1
    levels = np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * top)
    Image.fromarray(levels.astype(np.uint8 if bits == 8 else np.uint16)).save(path, format="PNG")


def _display(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


# ---- format detection ------------------------------------------------------------------------


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(
            path, "image file", "Check the data set root and that every image was extracted."
        )
    if path.is_dir():
        raise ImageReadError(path, "it is a folder, not an image file", "Point to the image file.")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)", _CORRUPT_FIX)
    return path


def _is_dicom(path: Path) -> bool:
    """True for a DICOM file (by its 'DICM' magic, or its suffix when it has no preamble)."""
    with path.open("rb") as stream:
        head = stream.read(_DICOM_MAGIC_OFFSET + 4)
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


# ---- JPEG / PNG (Pillow) ---------------------------------------------------------------------


def _load_pillow(path: Path) -> np.ndarray:
    # EXIF orientation is deliberately ignored: published boxes refer to the stored pixel grid.
    with _pillow_errors(path), Image.open(path) as picture:
        picture.load()
        return _pillow_to_gray(picture)


@contextmanager
def _pillow_errors(source: Path | str):
    """Pillow's errors for a damaged or implausible image as ImageReadError naming ``source``."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            source, f"the image is implausibly large ({error})", "Check the file is a radiograph."
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(
            source, f"not a readable JPEG/PNG/DICOM image ({error})", _CORRUPT_FIX
        ) from error


def _pillow_to_gray(picture: Image.Image) -> np.ndarray:
    mode = picture.mode
    if mode.startswith("I;16"):
        return np.asarray(picture).astype(np.float64) / 65535.0
    if mode == "I":
        # Pillow presents 16-bit grayscale PNG/TIFF samples as 32-bit integers.
        return np.asarray(picture).astype(np.float64) / 65535.0
    if mode == "F":
        values = np.asarray(picture).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return values
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if mode != "L":
        picture = picture.convert("L")  # RGB, RGBA, LA, P, 1, CMYK: luminance, alpha dropped
    return np.asarray(picture).astype(np.float64) / 255.0


# ---- DICOM -----------------------------------------------------------------------------------


def _read_dicom_dataset(path: Path, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    return _parse_dicom(path, path, stop_before_pixels=stop_before_pixels)


def _parse_dicom(
    source: Path | io.BytesIO, name: Path | str, *, stop_before_pixels: bool = False
) -> pydicom.Dataset:
    try:
        # force: some archives write DICOM without the 128-byte preamble.
        return pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as error:  # pydicom raises many types for a damaged header
        raise ImageReadError(name, f"not a readable DICOM file ({error})", _CORRUPT_FIX) from error


def _load_dicom(path: Path) -> np.ndarray:
    return _dicom_pixels(_read_dicom_dataset(path), path)


def _dicom_pixels(dataset: pydicom.Dataset, path: Path | str) -> np.ndarray:
    """The first frame through the display pipeline, float64 (not yet clipped)."""
    if "PixelData" not in dataset:
        raise ImageReadError(
            path, "no pixel data found: not a DICOM image, or its header is damaged", _CORRUPT_FIX
        )
    _check_decoder(path, dataset)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        log.warning("%s holds %d frames; using the first", path, frames)
    try:
        dataset.pixel_array_options(index=0)  # decode only the first frame
        stored = dataset.pixel_array
    except Exception as error:  # decoders raise many types for truncated or damaged data
        raise ImageReadError(
            path, f"its pixel data cannot be decoded ({error})", _CORRUPT_FIX
        ) from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        display = _grayscale_display(path, stored, dataset)
        return 1.0 - display if photometric == "MONOCHROME1" else display
    if stored.ndim == 3 and stored.shape[-1] == 3:  # RGB, or YBR that pydicom converted to RGB
        top = (1 << int(dataset.get("BitsStored", 8))) - 1
        return (stored.astype(np.float64) @ _LUMA) / top
    raise ImageReadError(
        path,
        f"PhotometricInterpretation {photometric} is not supported",
        "Convert it to a MONOCHROME2 or RGB DICOM, PNG or JPEG.",
    )


def _check_decoder(path: Path | str, dataset: pydicom.Dataset) -> None:
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise ImageReadError(
            path,
            f"its transfer syntax {syntax} has no pixel decoder in pydicom",
            "Convert the file to uncompressed DICOM (e.g. dcmtk `dcmdjpeg` or `gdcmconv --raw`).",
        ) from error
    if not decoder.is_available:
        raise ImageReadError(
            path,
            f"its pixels are compressed as {syntax.name} and no decoder for it is installed",
            "Install one of: "
            + "; ".join(decoder.missing_dependencies)
            + " (e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`), or convert"
            " the file to uncompressed DICOM (e.g. dcmtk `dcmdjpeg`).",
        )


def _grayscale_display(
    path: Path | str, stored: np.ndarray, dataset: pydicom.Dataset
) -> np.ndarray:
    """Stored values to [0, 1] display values before any MONOCHROME1 inversion."""
    values = apply_modality_lut(stored, dataset)
    if dataset.get("VOILUTSequence"):
        return _apply_voi_lut_sequence(values, dataset)
    window = _first_window(path, dataset)
    if window is not None:
        return _apply_window(values, *window)
    values = values.astype(np.float64)
    low, high = _stored_range(dataset)
    data_low, data_high = float(values.min()), float(values.max())
    if (data_high - data_low) * _MIN_USED_SHARE < high - low:
        # BitsStored overstates the data (e.g. 12-bit data in a 16-bit container): the stored
        # range would give a nearly flat image, so stretch the data's own range instead.
        low, high = data_low, data_high
    return (values - low) / (high - low) if high > low else values * 0.0


def _apply_voi_lut_sequence(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    # A LUT is indexed by integers (pydicom truncates floats from a rescale; round instead).
    indices = np.rint(values).astype(np.int64)
    descriptor = dataset.VOILUTSequence[0].LUTDescriptor
    entries, first_mapped = int(descriptor[0]) or 1 << 16, int(descriptor[1])
    domain = np.arange(first_mapped, first_mapped + entries, dtype=np.int64)
    lut_values = apply_voi(domain, dataset).astype(np.float64)
    # Stretch to the LUT's own output range: its nominal bit depth is often misstated.
    low, high = float(lut_values.min()), float(lut_values.max())
    output = apply_voi(indices, dataset).astype(np.float64)
    return (output - low) / (high - low) if high > low else output * 0.0


def _first_window(path: Path | str, dataset: pydicom.Dataset) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT function) of the first window, or None when there is none."""
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    center, width = dataset.WindowCenter, dataset.WindowWidth
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    valid_width = width >= 1.0 if function == "LINEAR" else width > 0.0
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or not valid_width:
        log.warning(
            "%s: ignoring window (center %s, width %s, %s); using the stored range",
            path,
            center,
            width,
            function,
        )
        return None
    return center, width, function


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]."""
    values = values.astype(np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR":
        center, width = center - 0.5, width - 1.0
        if width == 0.0:
            return (values > center).astype(np.float64)
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)


def _stored_range(dataset: pydicom.Dataset) -> tuple[float, float]:
    """Lowest and highest value the stored bits can hold, after the Modality LUT."""
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    # Every stored value, so that a non-monotonic Modality LUT still gives the true range.
    mapped = apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), dataset)
    return float(np.min(mapped)), float(np.max(mapped))
