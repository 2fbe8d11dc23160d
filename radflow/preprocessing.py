"""The image preprocessing that ingest, training and serving must share.

Three steps, each one function, so that every path composes the same pieces:

    decode_scaled(bytes, size)  -> uint8 (h, w, C)          serving, and ingest of JPEG/PNG (CMYK, 16-bit)
    standardize(uint8, size)    -> uint8 (size, size, C)    pad to square, resize, round
    to_model_input(uint8)       -> float32 in [0, 1]        what the network sees

`decode_scaled` decodes a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain when the image
is still at least `size` across after it (the area resize would throw those pixels away anyway),
which makes decoding a radiograph-sized JPEG several times cheaper and changes the stored pixels by
a grey level or two (docs/ingest.md, "Speed"). Ingest stores the output of `standardize`; training
feeds stored pixels through `preprocess_pixels`; the exported `serving_default` signature runs
`preprocess_encoded` on the request bytes, which decodes with the same `decode_scaled`. Because
`standardize` is idempotent at the target size, a training image and the same image sent to the
server reach the network as identical tensors (tests check this for PNG and for scaled JPEG).
"""

from __future__ import annotations

import tensorflow as tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Sample depths a 16-bit PNG's values are read at when it has no sBIT chunk: the smallest that holds
# its largest value (scanners and DICOM exports write 10-, 12- and 14-bit values in 16-bit PNGs).
PNG_VALUE_DEPTHS = (8, 10, 12, 14, 16)
# The DCT-domain scales libjpeg decodes at (tf.io.decode_jpeg's `ratio`), from none to the largest.
JPEG_RATIOS = (1, 2, 4, 8)


def _uint(data: tf.Tensor, offset: tf.Tensor, length: int) -> tf.Tensor:
    """The big-endian unsigned integer of `length` bytes at `offset` of a scalar string, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8), tf.int64)
    return tf.reduce_sum(raw * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(length - 1, -1, -1,
                                                                                          dtype=tf.int64)))


def png_significant_bits(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first value of a PNG's sBIT chunk (significant bits of grey, or of red), 0 when it has none.

    Walks the chunks up to the first IDAT (sBIT must come before it), so bytes that happen to
    read "sBIT" inside other chunks are never taken for it. TensorFlow ops only: it runs inside
    the serving signature.
    """
    size = tf.cast(tf.strings.length(image_bytes), tf.int64)

    def more(offset, bits):
        kind = tf.strings.substr(image_bytes, tf.minimum(offset + 4, size), 4)  # substr past the end raises
        return tf.logical_and(tf.logical_and(offset + 12 <= size, bits == 0),
                              tf.logical_and(kind != "IDAT", kind != "IEND"))

    def step(offset, bits):
        found = tf.strings.substr(image_bytes, offset + 4, 4) == "sBIT"
        value = tf.cond(found, lambda: tf.cast(_uint(image_bytes, offset + 8, 1), tf.int32), lambda: 0)
        return offset + 12 + _uint(image_bytes, offset, 4), value

    _, bits = tf.while_loop(more, step, (tf.constant(8, tf.int64), tf.constant(0)), maximum_iterations=64)
    return bits


def _decode_wide_png(image_bytes: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A 16-bit PNG to uint8 at its real sample depth: sBIT's, else the smallest of PNG_VALUE_DEPTHS
    that holds its values. A writer that followed the PNG spec scaled its values up to 16 bits;
    one that did not left 12-bit values in the low bits, which read as 16-bit come out near black."""
    image = tf.io.decode_png(image_bytes, channels=channels, dtype=tf.uint16)
    peak = tf.cast(tf.reduce_max(image), tf.int32)
    by_range = tf.constant(PNG_VALUE_DEPTHS[0]) + 2 * tf.reduce_sum(
        tf.cast(peak >= tf.constant([2**d for d in PNG_VALUE_DEPTHS[:-1]]), tf.int32))
    sbit = png_significant_bits(image_bytes)
    # sBIT = b with values below 2**b: b-bit values as they are; with larger values: scaled to 16 bits.
    bits = tf.where(sbit > 0, tf.where(peak < tf.bitwise.left_shift(1, sbit), sbit, 16), by_range)
    top = tf.cast(tf.bitwise.left_shift(1, bits) - 1, tf.float32)
    scaled = tf.round(tf.cast(image, tf.float32) * (255.0 / top))
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8), bits


def jpeg_ratio(height: tf.Tensor, width: tf.Tensor, size: int, resize_policy: str = "pad") -> tf.Tensor:
    """The index in JPEG_RATIOS of the largest scale at which a JPEG still covers `size` after it.

    libjpeg's scaled output is ceil(side / ratio) across; the side that must stay at least `size` is
    the one `standardize` maps onto `size`: the longer side when padding, the shorter (the centre
    square's) when cropping. So a scaled image is still shrunk (or kept) by `standardize`, never
    enlarged, and an image under twice `size` is decoded at full size.

    Args:
        height: the JPEG's height (int32 scalar, e.g. from tf.image.extract_jpeg_shape).
        width: its width.
        size: the stored side.
        resize_policy: "pad" or "crop".

    Returns:
        An int32 scalar, 0 (full size) to len(JPEG_RATIOS) - 1.
    """
    side = tf.maximum(height, width) if resize_policy == "pad" else tf.minimum(height, width)
    ratios = tf.constant(JPEG_RATIOS[1:], tf.int32)
    return tf.reduce_sum(tf.cast((side + ratios - 1) // ratios >= size, tf.int32))


def decode_scaled(image_bytes: tf.Tensor, channels: int, size: int,
                  resize_policy: str = "pad") -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Decodes JPEG (CMYK too), PNG (8- or 16-bit at its real depth), BMP or GIF bytes to uint8, a
    JPEG at the smallest scale (1/2, 1/4, 1/8, see `jpeg_ratio`) that still covers `size`.

    The one decode of ingest and the serving signature: the scaled JPEG's pixels differ from a full
    decode's (by a grey level or two once standardised), so both must decode alike.

    Args:
        image_bytes: a scalar tf.string.
        channels: 1 for grayscale (colour inputs are converted), 3 for RGB.
        size: the side `standardize` will bring the image to; 0 decodes a JPEG at full size.
        resize_policy: "pad" or "crop", which decides the side that must cover `size`.

    Returns:
        The pixels, uint8 (h, w, channels) at the scale decoded; the bits per sample the values were
        read at (int32: a PNG's real depth, see `_decode_wide_png`, 1, 2 or 4 for such PNGs, 8 for other
        formats); and the source's full height and width (int32).
    """
    is_png = tf.logical_and(tf.strings.substr(image_bytes, 0, 8) == PNG_SIGNATURE,
                            tf.strings.length(image_bytes) > 24)  # a shorter one fails to decode below
    png_depth = tf.cond(is_png, lambda: tf.cast(_uint(image_bytes, 24, 1), tf.int32),  # IHDR's bit depth
                        lambda: tf.constant(8))

    def plain():
        image = tf.io.decode_image(image_bytes, channels=channels, dtype=tf.uint8, expand_animations=False)
        return image, tf.shape(image)[0], tf.shape(image)[1]

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        height, width = shape[0], shape[1]
        index = jpeg_ratio(height, width, size, resize_policy) if size else None

        def at(ratio: int):
            def run():
                if channels == 3:
                    return tf.io.decode_jpeg(image_bytes, channels=3, ratio=ratio)
                # libjpeg converts CMYK and YCCK to RGB only; grey then comes from RGB
                return tf.cond(shape[2] == 4,
                               lambda: tf.image.rgb_to_grayscale(tf.io.decode_jpeg(image_bytes, channels=3,
                                                                                   ratio=ratio)),
                               lambda: tf.io.decode_jpeg(image_bytes, channels=1, ratio=ratio))
            return run

        pixels = tf.switch_case(index, [at(r) for r in JPEG_RATIOS]) if size else at(1)()
        return pixels, height, width

    def jpeg_or_other():
        pixels, height, width = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, plain)
        return pixels, tf.constant(8), height, width

    def wide_png():
        pixels, bits = _decode_wide_png(image_bytes, channels)
        return pixels, bits, tf.shape(pixels)[0], tf.shape(pixels)[1]

    def png():
        pixels, height, width = plain()
        return pixels, png_depth, height, width

    image, bits, height, width = tf.cond(
        tf.logical_and(is_png, png_depth == 16), wide_png, lambda: tf.cond(is_png, png, jpeg_or_other))
    image.set_shape([None, None, channels])
    return image, bits, height, width


def decode_image(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes JPEG, PNG, BMP or GIF bytes to uint8 (H, W, channels) at full size, as `decode_scaled` does.

    Args:
        image_bytes: a scalar tf.string.
        channels: 1 for grayscale (colour inputs are converted), 3 for RGB.

    Returns:
        uint8 tensor of rank 3.
    """
    return decode_scaled(image_bytes, channels, 0)[0]


def standardize(image: tf.Tensor, size: int, source_size: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """Pads to a square (keeping the aspect ratio, so anatomy is not squashed) and resizes.

    Shrinking uses an area (box) filter: every source pixel is averaged in, so nothing aliases,
    at half the cost of antialiased bilinear, which matters because ingest shrinks every image of
    an archive. Enlarging uses bilinear, where an area filter would repeat pixels as blocks. The
    layout is `tf.image.resize_with_pad`'s: the resized image is floor(side / ratio) across, placed
    floor((size - side / ratio) / 2) from the top left.

    Args:
        image: uint8 (H, W, C).
        size: output height and width.
        source_size: (height, width) of the source when `image` was decoded from it at a reduced
            scale (`decode_scaled`): the layout is computed from it, so the image lands on the pixels a
            full decode would have (libjpeg's ceil(side / ratio) would otherwise move the edge of the
            padding by a pixel). None: the image's own size.

    Returns:
        uint8 (size, size, C). Rounding back to uint8 makes the result identical whether it is
        computed at ingest time and stored, or computed at request time by the server; an image
        already at `size` comes back unchanged.
    """
    image = tf.cast(image, tf.float32)
    height, width = (tf.shape(image)[0], tf.shape(image)[1]) if source_size is None else source_size
    f_height, f_width, f_size = tf.cast(height, tf.float32), tf.cast(width, tf.float32), tf.constant(size, tf.float32)
    ratio = tf.maximum(f_width / f_size, f_height / f_size)
    inner = [tf.cast(tf.floor(f_height / ratio), tf.int32), tf.cast(tf.floor(f_width / ratio), tf.int32)]
    top = tf.maximum(0, tf.cast(tf.floor((f_size - f_height / ratio) / 2), tf.int32))
    left = tf.maximum(0, tf.cast(tf.floor((f_size - f_width / ratio) / 2), tf.int32))
    shrink = tf.maximum(tf.shape(image)[0], tf.shape(image)[1]) > size
    resized = tf.cond(
        shrink,
        lambda: tf.image.resize(image, inner, method=tf.image.ResizeMethod.AREA),
        lambda: tf.image.resize(image, inner, method=tf.image.ResizeMethod.BILINEAR, antialias=True),
    )
    padded = tf.image.pad_to_bounding_box(resized, top, left, size, size)
    return tf.cast(tf.clip_by_value(tf.round(padded), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor) -> tf.Tensor:
    """The centre square of an (H, W, C) image: the `crop` resize policy, applied before `standardize`."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(h, w)
    return image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


def to_model_input(image: tf.Tensor) -> tf.Tensor:
    """Scales uint8 pixels to float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0


def standardize_source(image: tf.Tensor, size: int, resize_policy: str = "pad",
                       source_size: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """A decoded source image to the stored pixels: the centre square first under "crop", then `standardize`.

    Args:
        image: uint8 (h, w, C), as `decode_scaled` returns it.
        size: the stored side.
        resize_policy: "pad" or "crop".
        source_size: the source's (height, width) when `image` is a scaled decode of it.
    """
    if resize_policy == "crop":  # a square: its layout is the whole output whatever its scale
        return standardize(center_crop(image), size)
    return standardize(image, size, source_size)


def preprocess_pixels(image: tf.Tensor, size: int) -> tf.Tensor:
    """Decoded uint8 pixels (one image or a batch) to the network's input."""
    if image.shape.rank == 4:
        return tf.map_fn(lambda im: to_model_input(standardize(im, size)), image, fn_output_signature=tf.float32)
    return to_model_input(standardize(image, size))


def preprocess_encoded(image_bytes: tf.Tensor, size: int, channels: int, resize_policy: str = "pad") -> tf.Tensor:
    """Encoded image bytes (a scalar tf.string) to the network's input.

    Args:
        image_bytes: JPEG/PNG/BMP/GIF bytes.
        size: the model's input side.
        channels: the model's input channels.
        resize_policy: the examples' policy (DatasetMetadata.resize_policy): "pad" keeps the whole
            image, "crop" takes its centre square first, as ingest did.
    """
    image, _, height, width = decode_scaled(image_bytes, channels, size, resize_policy)
    return to_model_input(standardize_source(image, size, resize_policy, (height, width)))
