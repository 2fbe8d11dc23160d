"""The shared preprocessing (radflow/preprocessing.py) on tiny images with hand-computed values."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from radflow.preprocessing import decode_image, decode_scaled, jpeg_ratio, standardize, standardize_source


def _standardize(image: np.ndarray, size: int) -> np.ndarray:
    return standardize(tf.constant(image[..., None]), size).numpy()[..., 0]


def test_shrinking_averages_every_block_of_source_pixels():
    image = np.array([[0, 10, 100, 110],
                      [20, 30, 120, 130],
                      [200, 210, 50, 50],
                      [220, 231, 50, 50]], np.uint8)
    # An area filter: each output pixel is its 2x2 block's mean, rounded (215.25 -> 215).
    assert _standardize(image, 2).tolist() == [[15, 115], [215, 50]]


def test_shrinking_a_non_square_image_pads_it_with_black_first():
    image = np.full((4, 2), 100, np.uint8)
    # 4x2 becomes 2x1 of 100s, centred on a 2x2 black square: the column lands on the left.
    assert _standardize(image, 2).tolist() == [[100, 0], [100, 0]]


def test_enlarging_interpolates_instead_of_repeating_pixels():
    image = np.array([[0, 255], [0, 255]], np.uint8)
    row = _standardize(image, 4)[0].tolist()
    # Bilinear with half-pixel centres: 0, 0.25, 0.75 and 1 of the way from 0 to 255.
    assert row == [0, 64, 191, 255]


def test_an_image_already_at_the_size_comes_back_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)
    assert np.array_equal(_standardize(image, 8), image)


def _jpeg(pixels: np.ndarray, mode: str = "L") -> tf.Tensor:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG", quality=90)
    return tf.constant(buf.getvalue())


@pytest.mark.parametrize("height, width, size, policy, index", [
    (446, 300, 224, "pad", 0),  # ceil(446 / 2) = 223 < 224: full size
    (447, 300, 224, "pad", 1),  # ceil(447 / 2) = 224: 1/2
    (300, 895, 224, "pad", 2),  # ceil(895 / 4) = 224: 1/4
    (1784, 1784, 224, "pad", 2),  # ceil(1784 / 8) = 223: still 1/4
    (1785, 1000, 224, "pad", 3),  # 1/8 on the longer side when padding ...
    (1785, 1000, 224, "crop", 2),  # ... on the shorter (the centre square's) when cropping: ceil(1000 / 4) = 250
    (100, 100, 224, "pad", 0),  # an image under the size is never scaled
])
def test_jpeg_ratio_keeps_the_side_standardize_maps_at_least_the_size(height, width, size, policy, index):
    assert int(jpeg_ratio(tf.constant(height), tf.constant(width), size, policy)) == index


def test_scaled_decode_returns_the_source_size_and_decodes_png_whole():
    pixels = np.random.default_rng(1).integers(0, 256, (301, 517), np.uint8)
    image, bits, height, width = decode_scaled(_jpeg(pixels), 1, 40)
    assert image.shape == (38, 65, 1) and (int(height), int(width), int(bits)) == (301, 517, 8)  # 1/8: ceil(517/8)
    assert decode_scaled(_jpeg(pixels), 1, 40, "crop")[0].shape == (76, 130, 1)  # 1/4: ceil(301/8) = 38 < 40
    assert decode_scaled(_jpeg(pixels, "CMYK"), 3, 40)[0].shape == (38, 65, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert decode_scaled(tf.constant(buf.getvalue()), 1, 40)[0].shape == (301, 517, 1)


def test_scaled_decode_stores_nearly_the_pixels_of_a_full_decode():
    """1/8 DCT scaling then the area resize, against a full decode then the area resize and against the
    pixels before JPEG: about a grey level, unbiased, with the padding's edge in the same place
    (libjpeg's ceil(517 / 8) = 65 columns would move it if the layout came from the decoded size)."""
    yy, xx = np.mgrid[0:301, 0:517]
    smooth = (128 + 60 * np.sin(xx / 40) * np.cos(yy / 30)).astype(np.uint8)
    data = _jpeg(smooth)
    scaled, _, height, width = decode_scaled(data, 1, 40)
    assert scaled.shape == (38, 65, 1)
    stored = standardize_source(scaled, 40, "pad", (height, width)).numpy().astype(int)
    full = standardize(decode_image(data, 1), 40).numpy().astype(int)
    source = standardize(tf.constant(smooth[..., None]), 40).numpy().astype(int)
    assert np.abs(stored - full).max() <= 8 and np.abs(stored - full).mean() < 1.5
    assert np.abs(stored - source).mean() < 1.5 and abs((stored - source).mean()) < 0.25
    assert np.array_equal(stored == 0, full == 0)  # the same rows of padding
