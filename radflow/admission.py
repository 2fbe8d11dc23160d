"""Which images a radflow model may be asked about: one set of rules for ingest and for serving.

A model answers for any bytes it can decode, including a 1x1 PNG or an all-black frame, which no
training image ever looked like. Ingest and serving apply the same `AdmissionRules` (ingest builds
them from `IngestConfig.min_side`, `max_pixels` and `min_std`): a shorter side under `min_side`, more
pixels than `max_pixels` (a 389 KB all-zero PNG can declare 20,000 x 20,000 pixels and decode to
gigabytes) and a near-constant image (std_intensity < `min_std` on 0-255, the curated schema's
minimum too) are quarantined by ingest and refused by the server.

The size rules read only the image header (PIL opens a file without decoding it), before anything
is decoded. Serving measures the constant check here at reduced scale (JPEG's DCT scaling, then box
reduction to about 256 px), a fraction of the model's own decode; ingest applies `check_std` to the
std_intensity it stores, from its own decode.

    from radflow.admission import AdmissionRules, admit
    header = admit(data, AdmissionRules())   # raises Refused(reason, message); None: not an image PIL knows
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# PIL refuses to open an image above twice its MAX_IMAGE_PIXELS (DecompressionBombError), so a
# pixel limit above that could never be reached.
PIL_BOMB_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
STD_SCALE_SIDE = 256  # the constant check measures the image reduced to about this shorter side

# Refusal reasons, also the `reason` label of the server's refused-requests metric.
TOO_SMALL = "image_too_small"
TOO_MANY_PIXELS = "image_too_many_pixels"
CONSTANT = "image_constant"
UNREADABLE = "image_unreadable"


@dataclass(frozen=True)
class AdmissionRules:
    """The admission rules; the defaults are ingest's and the curated schema's.

    Raises:
        ValueError: a field out of range, named.
    """

    min_side: int = 32  # IngestConfig.min_side: shorter sides below this are quarantined by ingest
    max_pixels: int = 100_000_000  # width x height; radiographs are at most ~4,300 x 4,300 (18 MP)
    min_std: float = 1.0  # the schema's std_intensity minimum (0-255 scale); 0 turns the check off

    def __post_init__(self):
        if self.min_side < 1:
            raise ValueError(f"admission min_side must be at least 1, got {self.min_side}")
        if not 1 <= self.max_pixels <= PIL_BOMB_PIXELS:
            raise ValueError(f"admission max_pixels must be in [1, {PIL_BOMB_PIXELS}] (PIL refuses larger "
                             f"images outright), got {self.max_pixels}")
        if self.min_std < 0:
            raise ValueError(f"admission min_std must be >= 0, got {self.min_std}")

    def check_size(self, width: int, height: int) -> None:
        """The size rules, on the size an image's header declares: the pixel count, then the shorter side.

        Raises:
            Refused: TOO_MANY_PIXELS or TOO_SMALL, naming the size and the limit.
        """
        pixels = width * height
        if pixels > self.max_pixels:
            raise Refused(TOO_MANY_PIXELS, f"image is {width}x{height} = {pixels} pixels, over the limit of "
                          f"{self.max_pixels}")
        if min(width, height) < self.min_side:
            raise Refused(TOO_SMALL, f"image is {width}x{height} px; its shorter side must be at least "
                          f"{self.min_side} px (ingest quarantines smaller images)")

    def check_std(self, std: float) -> None:
        """The constant-image rule, on an intensity standard deviation measured on 0-255.

        Raises:
            Refused: CONSTANT, naming the value and the limit.
        """
        if self.min_std > 0 and std < self.min_std:
            raise Refused(CONSTANT, f"image is (nearly) constant: intensity std {std:.2f} < {self.min_std} on 0-255 "
                          "(the schema rejects such images; is it blank or all black?)")


class Refused(ValueError):
    """An image the rules do not admit.

    Args:
        reason: one of TOO_SMALL, TOO_MANY_PIXELS, CONSTANT, UNREADABLE.
        message: what was wrong, for the caller.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageHeader:
    format: str  # PIL's name: JPEG, PNG, BMP, GIF, ...
    width: int
    height: int
    mode: str  # PIL mode: L, RGB, I;16, ...

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader | None:
    """The format and size from the image's header, without decoding its pixels.

    Returns:
        None when PIL does not recognise the bytes as an image.

    Raises:
        Refused: TOO_MANY_PIXELS when PIL itself refuses the size as a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return ImageHeader(im.format or "", im.width, im.height, im.mode)
    except Image.DecompressionBombError as err:
        raise Refused(TOO_MANY_PIXELS, f"image has more than {PIL_BOMB_PIXELS} pixels ({err})") from err
    except (OSError, ValueError, SyntaxError):  # PIL's ways of saying "not an image I know"
        return None


def intensity_std(data: bytes) -> float:
    """The standard deviation of the image's gray levels on 0-255, measured at about 256 px.

    Raises:
        Refused: UNREADABLE when the header parses but the pixels do not decode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format == "JPEG":  # decode at 1/2..1/8 scale, never below STD_SCALE_SIDE
                    scale = max(1, min(im.size) // STD_SCALE_SIDE)
                    im.draft("L", (max(1, im.width // scale), max(1, im.height // scale)))
                wide = im.mode in ("I", "I;16", "I;16B", "I;16L", "F")
                im = im.convert("F" if wide else "L")
                factor = min(im.size) // STD_SCALE_SIDE
                if factor > 1:
                    im = im.reduce(factor)
                pixels = np.asarray(im, np.float32)
    except (OSError, ValueError, SyntaxError) as err:
        raise Refused(UNREADABLE, f"image does not decode: {err}") from err
    if wide:
        pixels = pixels * (255.0 / 65535.0)
    return float(pixels.std())


def admit(data: bytes, rules: AdmissionRules) -> ImageHeader | None:
    """Checks one encoded image against the rules.

    Args:
        data: encoded image bytes (JPEG, PNG, BMP, GIF, ...).
        rules: the limits.

    Returns:
        The header of an admitted image; None when the bytes are not an image PIL recognises
        (the caller decides: the model's own decoder will refuse them with its error).

    Raises:
        Refused: the image breaks a rule; the message names the rule and the value.
    """
    header = read_header(data)
    if header is None:
        return None
    rules.check_size(header.width, header.height)
    if rules.min_std > 0:
        rules.check_std(intensity_std(data))
    return header
