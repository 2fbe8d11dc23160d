"""What the network looks at: Grad-CAM heatmaps, first-layer filters and feature maps.

Shared by the evaluation model card and the review page. Everything works on the Keras model
train keeps beside the export (`model.keras`) and on images already in the network's input
space, float32 in [0, 1] of shape (H, W, C) — `radflow.preprocessing.to_model_input` of
stored pixels.

    model = keras.models.load_model("runs/model/model.keras")
    heat = grad_cam(model, image)            # (H, W) in [0, 1]
    rgb = overlay(image, heat)               # (H, W, 3) in [0, 1], for display
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from radflow.ensemble import ensemble_members

_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalMaxPooling2D)


def _is_spatial(layer: keras.layers.Layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # layers that were never called have no output
        return False


def last_conv_layer(model: keras.Model) -> str:
    """The layer Grad-CAM reads: the last one with a 4-D (N, h, w, c) output that is not a pooling layer.

    That is the last convolution block's activation: the most class-specific maps that still
    keep a spatial layout, at twice the resolution of the pooling after it.

    Raises:
        ValueError: the model has no spatial layer (not a CNN).
    """
    for layer in reversed(model.layers):
        if _is_spatial(layer) and not isinstance(layer, _POOLING) and not isinstance(layer, keras.layers.InputLayer):
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output; Grad-CAM needs a convolutional network")


def _class_score(predictions: tf.Tensor, class_index: int) -> tf.Tensor:
    """The score of one class; a single sigmoid unit scores class 1 as p and class 0 as 1 - p."""
    if predictions.shape[-1] == 1:
        return predictions[:, 0] if class_index == 1 else 1.0 - predictions[:, 0]
    return predictions[:, class_index]


def _probe(model: keras.Model, outputs) -> keras.Model:
    """A model from the same input to other layers' outputs (the input unwrapped when there is one)."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs)


def grad_cam(
    model: keras.Model, image: np.ndarray, class_index: int | None = None, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

    The class score's gradients with respect to a convolutional layer's maps, averaged over
    space, weight those maps; the positive part of the weighted sum, upsampled to the image,
    is the heatmap.

    Args:
        model: a Keras classifier taking (N, H, W, C) float images.
        image: one image, float in [0, 1], (H, W, C).
        class_index: the class to explain; None for the predicted class. With a single sigmoid
            unit, 1 is the positive class and 0 the negative.
        layer_name: the layer to read; default `last_conv_layer(model)`. An ensemble
            (radflow.ensemble) is explained as the mean of its members' maps, each at this layer
            of the member (or its own last convolutional one).

    Returns:
        Heatmap (H, W), float32 in [0, 1]; all zeros when no region supports the class.

    Raises:
        ValueError: image is not (H, W, C), or the model has no convolutional layer.
    """
    if image.ndim != 3:
        raise ValueError(f"expected one image (H, W, C), got shape {image.shape}")
    members = ensemble_members(model)
    if len(members) > 1:  # the mean score's evidence: the mean of the members' maps, each at its own layer
        if class_index is None:
            p = np.asarray(model(image[None].astype(np.float32), training=False))[0]
            class_index = int(p[0] >= 0.5) if len(p) == 1 else int(p.argmax())
        cam = np.mean([grad_cam(m, image, class_index, layer_name) for m in members], axis=0)
        peak = cam.max()
        return (cam / peak if peak > 0 else cam).astype(np.float32)
    layer = model.get_layer(layer_name or last_conv_layer(model))
    probe = _probe(model, [layer.output, model.outputs[0]])
    x = tf.convert_to_tensor(image[None], tf.float32)
    with tf.GradientTape() as tape:
        maps, predictions = probe(x, training=False)
        if class_index is None:  # the predicted class: a single sigmoid unit at 0.5
            p = predictions.numpy()[0]
            class_index = int(p[0] >= 0.5) if len(p) == 1 else int(p.argmax())
        score = _class_score(predictions, class_index)
    grads = tf.cast(tape.gradient(score, maps), tf.float32)  # float16 under mixed precision
    maps = tf.cast(maps, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[0]
    cam = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blends a heatmap over an image for display.

    Args:
        image: (H, W, C) float in [0, 1]; grayscale is shown as gray.
        heatmap: (H, W) in [0, 1], e.g. from `grad_cam`.
        alpha: weight of the heatmap colour.
        colormap: a matplotlib colormap name.

    Returns:
        RGB (H, W, 3) float32 in [0, 1].
    """
    from matplotlib import colormaps

    gray = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    colour = colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * gray + alpha * colour, 0, 1).astype(np.float32)


def first_conv_layer(model: keras.Model) -> keras.layers.Conv2D:
    """The first Conv2D layer, whose filters act on raw pixels.

    Raises:
        ValueError: the model has no Conv2D layer.
    """
    for layer in ensemble_members(model)[0].layers:  # an ensemble's members share one architecture
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    raise ValueError(f"model {model.name!r} has no Conv2D layer")


def first_layer_filters(model: keras.Model) -> np.ndarray:
    """The first convolution's kernels, averaged over input channels, each scaled to [0, 1].

    Returns:
        (F, kh, kw) float32: one small image per filter.
    """
    kernel = np.asarray(first_conv_layer(model).kernel).mean(axis=2)  # (kh, kw, F)
    lo, hi = kernel.min(axis=(0, 1)), kernel.max(axis=(0, 1))
    scaled = (kernel - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.moveaxis(scaled, -1, 0).astype(np.float32)


def feature_maps(model: keras.Model, image: np.ndarray, layer_name: str | None = None) -> np.ndarray:
    """The activations of one layer for one image (default: the first convolution).

    Args:
        model: a Keras CNN.
        image: (H, W, C) float in [0, 1].
        layer_name: a layer with a 4-D output; default the first Conv2D.

    Returns:
        (F, h, w) float32: one map per channel.
    """
    model = ensemble_members(model)[0]
    layer = model.get_layer(layer_name) if layer_name else first_conv_layer(model)
    probe = _probe(model, layer.output)
    maps = np.asarray(probe(image[None].astype(np.float32), training=False))[0]
    return np.moveaxis(maps, -1, 0).astype(np.float32)
