"""DICOM to display pixels, by the one set of rules that ingest, the predict client and review share.

A radiograph's stored values are not display values. The rules, in DICOM's own order (PS3.4 N.2):

1. modality LUT: RescaleSlope/RescaleIntercept (or a Modality LUT Sequence) to physical units;
2. VOI LUT: the VOI LUT Sequence if present, else the first WindowCenter/WindowWidth
   (VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID), else the image's own min..max;
3. MONOCHROME1 is inverted, so bone is always bright;
4. the result, in [0, 1], is quantised to 8 (or 16) bits.

Multi-frame files are rejected: a model trained on single radiographs has no rule for choosing a
frame. Only the header fields in `ALLOWED_HEADER_FIELDS` may leave this module; the patient id is
returned separately so that callers can hash it and drop it.

    png = to_png(open("chest.dcm", "rb").read())   # what the serving signature accepts
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

# The only header fields that may enter any output. Everything else in a DICOM header (names,
# dates, institution, accession numbers, free text) can identify a patient.
# Manufacturer names the equipment's vendor, never a person or a site: validate needs it to find a class
# that one scanner vendor gives away (a shortcut).
ALLOWED_HEADER_FIELDS = ("Modality", "PhotometricInterpretation", "BitsStored", "ViewPosition", "BodyPartExamined",
                         "Manufacturer")

# Why a file cannot be converted; ingest uses these as quarantine reasons.
NOT_AN_IMAGE = "not an image"
UNSUPPORTED_FORMAT = "unsupported format"
MULTI_FRAME = "multi-frame"
TRUNCATED = "truncated"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


class DicomError(ValueError):
    """A DICOM file that cannot become an image, with `reason` one of this module's reason constants."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DicomImage:
    """A DICOM file rendered for display.

    Args:
        pixels: uint8 or uint16 (H, W, 1) for monochrome, (H, W, 3) for colour.
        bits_stored: the source's BitsStored, e.g. 12 for most radiographs.
        header: the allow-listed header fields present in the file, as strings.
        patient_id: DICOM PatientID ("" if absent). Identifying: hash it, never store it.
    """

    pixels: np.ndarray
    bits_stored: int
    header: dict[str, str] = field(default_factory=dict)
    patient_id: str = ""


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (the 'DICM' magic after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(data: bytes, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Parses DICOM Part 10 bytes.

    Raises:
        DicomError: NOT_AN_IMAGE if the bytes are not DICOM, TRUNCATED if the header is cut or damaged.
    """
    if not is_dicom(data):
        raise DicomError(NOT_AN_IMAGE, "no DICM marker")
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as err:
        # The DICM marker is there, so a header that does not parse is a damaged file.
        raise DicomError(TRUNCATED, f"header: {err}") from err


def allowed_header(ds: pydicom.Dataset) -> dict[str, str]:
    """The allow-listed fields present in `ds`, as strings; nothing else."""
    out = {}
    for name in ALLOWED_HEADER_FIELDS:
        value = ds.get(name)
        if value is not None and str(value) != "":
            out[name] = str(value)
    return out


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Maps modality values through a VOI window to [0, 1] (DICOM PS3.3 C.11.2.1.2).

    Args:
        values: float modality values.
        center: WindowCenter.
        width: WindowWidth (>= 1 for LINEAR, > 0 otherwise).
        function: VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID.

    Returns:
        float64 array in [0, 1].

    Raises:
        DicomError: UNSUPPORTED_FORMAT for an unknown function or an invalid width.
    """
    function = function.upper()
    if function == "SIGMOID":
        if width <= 0:
            raise DicomError(UNSUPPORTED_FORMAT, f"window width {width} must be > 0")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise DicomError(UNSUPPORTED_FORMAT, f"window width {width} must be > 0")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "LINEAR":
        if width < 1:
            raise DicomError(UNSUPPORTED_FORMAT, f"window width {width} must be >= 1")
        if width == 1:  # the standard's degenerate case: a threshold at center - 0.5
            return (values > center - 0.5).astype(np.float64)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    raise DicomError(UNSUPPORTED_FORMAT, f"VOILUTFunction {function}")


def _first(value) -> float:
    """The first of a possibly multi-valued number: DICOM's default window is the first one."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """VOI LUT Sequence, else the first window, else the image's own range; to [0, 1]."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        out_bits = int(item.LUTDescriptor[2]) or 16
        lut = apply_voi(values.astype(np.int64) if values.dtype.kind == "f" else values, ds, index=0)
        return np.clip(lut.astype(np.float64) / (2**out_bits - 1), 0.0, 1.0)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR")))
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values, dtype=np.float64)


# The Pixel Data tag (7FE0,0010) as it is written in little-endian transfer syntaxes.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _without_pixels(data: bytes, ds: pydicom.Dataset) -> DicomError:
    """Why a parsed file has no pixel data: cut short (TRUNCATED), or a DICOM object that is no image.

    pydicom returns what it could read of a file cut inside an element of undefined length (the
    encapsulated pixel data of JPEG 2000, JPEG and RLE files), which may be nothing at all.
    """
    sop_class = getattr(ds.get("SOPClassUID"), "name", "")
    if _PIXEL_DATA_TAG in data[132:]:
        return DicomError(TRUNCATED, "pixel data cut short")
    if "Rows" in ds:  # the image attributes are there: the file was cut before its pixels
        return DicomError(TRUNCATED, "image attributes but no pixel data")
    if "Image Storage" in sop_class:
        return DicomError(TRUNCATED, f"a {sop_class} object cut before its pixel data")
    if len(ds) == 0:
        return DicomError(TRUNCATED, "header: nothing after the file meta information")
    return DicomError(NOT_AN_IMAGE, "no pixel data")


def decode(data: bytes, bit_depth: int = 8) -> DicomImage:
    """Renders DICOM bytes as display pixels by the module's rules.

    Args:
        data: the bytes of a DICOM Part 10 file.
        bit_depth: 8 or 16, the output sample depth.

    Returns:
        The rendered image, its allow-listed header and the (identifying) patient id.

    Raises:
        DicomError: with reason NOT_AN_IMAGE, UNSUPPORTED_FORMAT, MULTI_FRAME or TRUNCATED.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    ds = read_dataset(data)
    if "PixelData" not in ds:
        raise _without_pixels(data, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(MULTI_FRAME, f"{frames} frames")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise DicomError(UNSUPPORTED_FORMAT, f"PhotometricInterpretation {photometric or 'missing'}")
    try:
        stored = ds.pixel_array  # decompresses any transfer syntax with an installed handler
    except (NotImplementedError, RuntimeError) as err:
        raise DicomError(UNSUPPORTED_FORMAT, f"transfer syntax {ds.file_meta.TransferSyntaxUID.name}: {err}") from err
    except (ValueError, EOFError, OSError) as err:
        raise DicomError(TRUNCATED, f"pixel data: {err}") from err

    top = 2**bit_depth - 1
    if photometric in _MONOCHROME:
        values = apply_modality_lut(stored, ds).astype(np.float64)
        unit = _voi(values, ds)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        pixels = np.rint(unit * top)[..., np.newaxis]
    else:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(stored, ds)
            source_top = np.iinfo(rgb.dtype).max  # the LUT's own depth: 8 or 16 bits
        else:
            rgb, source_top = stored, 2 ** int(ds.BitsStored) - 1
        pixels = np.rint(rgb.astype(np.float64) * (top / source_top))
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return DicomImage(
        pixels=np.clip(pixels, 0, top).astype(dtype),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 8))),
        header=allowed_header(ds),
        patient_id=str(ds.get("PatientID", "")),
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8/uint16 (H, W, 1) or (H, W, 3) pixels (16-bit only for grayscale)."""
    if pixels.shape[-1] == 1:
        image = Image.fromarray(pixels[..., 0])
    elif pixels.dtype == np.uint8:
        image = Image.fromarray(pixels, "RGB")
    else:
        raise ValueError("16-bit PNG output is grayscale only")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over size: the PNG is a transport format
    return buf.getvalue()


def to_png(data: bytes, bit_depth: int = 8) -> bytes:
    """DICOM bytes to the PNG bytes that the serving signature (`image_bytes`) accepts.

    The serving signature decodes to uint8, so the 8-bit default is exactly what the model sees;
    ingest converts DICOM through this function too, so training and serving get the same pixels.

    Args:
        data: the bytes of a DICOM Part 10 file.
        bit_depth: 8 (default) or 16 (grayscale only), for viewers that want the full range.

    Returns:
        PNG bytes.

    Raises:
        DicomError: the file cannot be rendered; `reason` says why.
    """
    return encode_png(decode(data, bit_depth).pixels)
