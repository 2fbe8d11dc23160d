import keras
import numpy as np
import pytest

from radflow import explain


@pytest.fixture(scope="module")
def brightness_model() -> keras.Model:
    """P(positive) = sigmoid(mean of relu(pixels) - 0.2): the evidence is exactly where pixels are bright."""
    inputs = keras.Input((8, 8, 1))
    maps = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(maps)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="scores")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.array([1.0, 0.5]).reshape(1, 1, 1, 2)])
    model.get_layer("scores").set_weights([np.array([[1.0], [1.0]]), np.array([-0.2])])
    return model


def _blob_image() -> np.ndarray:
    image = np.full((8, 8, 1), 0.05, np.float32)
    image[5:7, 1:3] = 1.0
    return image


def test_last_conv_layer_skips_pooling(brightness_model):
    assert explain.last_conv_layer(brightness_model) == "relu"
    flat = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="4-D"):
        explain.last_conv_layer(flat)


def test_grad_cam_peaks_on_the_evidence_for_the_class(brightness_model):
    heat = explain.grad_cam(brightness_model, _blob_image(), class_index=1)
    assert heat.shape == (8, 8) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert 4 <= row <= 7 and 0 <= col <= 3  # on (or bilinearly next to) the bright blob
    assert heat[5:7, 1:3].mean() > 3 * heat[0:3, 5:8].mean()
    # Brightness is evidence against the negative class, so nothing supports it.
    assert np.all(explain.grad_cam(brightness_model, _blob_image(), class_index=0) == 0)
    # By default the predicted class is explained: here positive (mean brightness > 0.2).
    assert np.array_equal(explain.grad_cam(brightness_model, _blob_image()), heat)
    with pytest.raises(ValueError, match="one image"):
        explain.grad_cam(brightness_model, _blob_image()[None])


def test_overlay_filters_and_feature_maps(brightness_model):
    image = _blob_image()
    rgb = explain.overlay(image, explain.grad_cam(brightness_model, image, 1))
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    filters = explain.first_layer_filters(brightness_model)
    assert filters.shape == (2, 1, 1)
    maps = explain.feature_maps(brightness_model, image)
    assert maps.shape == (2, 8, 8)
    np.testing.assert_allclose(maps[1], 0.5 * image[..., 0], rtol=1e-6)  # the second 1x1 kernel is 0.5
