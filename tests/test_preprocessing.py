"""The shared preprocessing (radflow/preprocessing.py) on tiny images with hand-computed values."""

import numpy as np
import tensorflow as tf

from radflow.preprocessing import standardize


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
