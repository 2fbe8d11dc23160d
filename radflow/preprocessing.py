"""The image preprocessing that ingest, training and serving must share.

Three steps, each one function, so that every path composes the same pieces:

    decode_image(bytes)        -> uint8 (H, W, C)          serving, and ingest of JPEG/PNG
    standardize(uint8, size)   -> uint8 (size, size, C)    pad to square, resize, round
    to_model_input(uint8)      -> float32 in [0, 1]        what the network sees

Ingest stores the output of `standardize`; training feeds stored pixels through
`preprocess_pixels`; the exported `serving_default` signature runs `preprocess_encoded` on the
request bytes. Because `standardize` is idempotent at the target size, a training image and the
same image sent to the server reach the network as identical tensors (a test checks this).
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes JPEG, PNG, BMP or GIF bytes to uint8 (H, W, channels).

    Args:
        image_bytes: a scalar tf.string.
        channels: 1 for grayscale (colour inputs are converted), 3 for RGB.

    Returns:
        uint8 tensor of rank 3.
    """
    image = tf.io.decode_image(image_bytes, channels=channels, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def standardize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Pads to a square (keeping the aspect ratio, so anatomy is not squashed) and resizes.

    Shrinking uses an area (box) filter: every source pixel is averaged in, so nothing aliases,
    at half the cost of antialiased bilinear, which matters because ingest shrinks every image of
    an archive. Enlarging uses bilinear, where an area filter would repeat pixels as blocks.

    Args:
        image: uint8 (H, W, C).
        size: output height and width.

    Returns:
        uint8 (size, size, C). Rounding back to uint8 makes the result identical whether it is
        computed at ingest time and stored, or computed at request time by the server; an image
        already at `size` comes back unchanged.
    """
    image = tf.cast(image, tf.float32)
    shrink = tf.maximum(tf.shape(image)[0], tf.shape(image)[1]) > size
    resized = tf.cond(
        shrink,
        lambda: tf.image.resize_with_pad(image, size, size, method=tf.image.ResizeMethod.AREA),
        lambda: tf.image.resize_with_pad(image, size, size, method=tf.image.ResizeMethod.BILINEAR, antialias=True),
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor) -> tf.Tensor:
    """The centre square of an (H, W, C) image: the `crop` resize policy, applied before `standardize`."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(h, w)
    return image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


def to_model_input(image: tf.Tensor) -> tf.Tensor:
    """Scales uint8 pixels to float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0


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
    image = decode_image(image_bytes, channels)
    return preprocess_pixels(center_crop(image) if resize_policy == "crop" else image, size)
