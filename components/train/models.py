"""The model zoo: the baseline CNN and keras.applications backbones under one classification head.

Every model takes the shared preprocessing's output (float32 in [0, 1], `channels` deep) and
returns class probabilities from a float32 layer named `scores`: one sigmoid unit for two
classes, a softmax beyond. Backbones are built *flat* into the outer model (through
`input_tensor`), so each of their layers, the last convolutional map included, can be fetched
with `model.get_layer(name)` for Grad-CAM; grayscale is repeated to three channels and each
backbone's own `preprocess_input` arithmetic runs in the graph, so the export needs nothing else.

Weights are never downloaded: "none" initialises randomly, anything else must be a weights file
(local or gs://) for the backbone without its top.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import keras

from radflow import examples as ex
from radflow import fileio
from radflow.components.train.config import BASELINE, TrainConfig

log = logging.getLogger(__name__)

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # on a 0-255 scale; channels are identical gray, so order is moot


@dataclass(frozen=True)
class Backbone:
    """A keras.applications network and the input arithmetic its weights were trained with.

    Args:
        build: the keras.applications constructor.
        preprocess: "tf" (scale to [-1, 1]), "torch" (ImageNet mean/std on [0, 1]), "caffe"
            (0-255 minus the ImageNet mean) or "raw255" (0-255; the network normalises itself).
        min_size: the smallest input side the architecture accepts.
    """

    build: Callable[..., keras.Model]
    preprocess: str
    min_size: int


BACKBONES = {
    "mobilenet_v2": Backbone(keras.applications.MobileNetV2, "tf", 32),
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, "raw255", 32),
    "resnet50": Backbone(keras.applications.ResNet50, "caffe", 32),
    "densenet121": Backbone(keras.applications.DenseNet121, "torch", 32),
    "inception_v3": Backbone(keras.applications.InceptionV3, "tf", 75),
    "vgg16": Backbone(keras.applications.VGG16, "caffe", 32),
}
NO_WEIGHTS = "none"
SCORES_LAYER = "scores"
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalMaxPooling2D)


def _head(x: keras.KerasTensor, metadata: ex.DatasetMetadata, bias: list[float], dense_units: int,
          dropout: float, dropout_first: bool) -> keras.KerasTensor:
    binary = metadata.num_classes == 2
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if dropout_first:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    if not dropout_first:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    if len(bias) != (1 if binary else metadata.num_classes):
        raise ValueError(f"initial bias {bias} does not fit a {metadata.num_classes}-class head")
    return keras.layers.Dense(
        1 if binary else metadata.num_classes,
        activation="sigmoid" if binary else "softmax",
        bias_initializer=keras.initializers.Constant(bias),
        dtype="float32",  # probabilities stay float32 under mixed precision
        name=SCORES_LAYER,
    )(x)


def build_baseline_cnn(metadata: ex.DatasetMetadata, config: TrainConfig, bias: list[float]) -> keras.Model:
    """Conv/BN/ReLU/pool blocks named block<i>_*, global pooling, dropout, dense, output.

    The first convolution has stride 2: radiographs are smooth at the pixel scale, and it
    quarters the cost of the widest layer.
    """
    inputs = keras.Input((metadata.image_size, metadata.image_size, metadata.channels), name="image")
    x = inputs
    for i, f in enumerate(config.filters, start=1):
        x = keras.layers.Conv2D(f, 3, strides=2 if i == 1 else 1, padding="same", use_bias=not config.batch_norm,
                                name=f"block{i}_conv")(x)
        if config.batch_norm:
            # momentum 0.9, not Keras' 0.99: small medical sets give few steps per epoch, and the
            # moving statistics used at validation time must settle within a few epochs.
            # synchronized: under several replicas every worker keeps the same statistics.
            x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    outputs = _head(x, metadata, bias, config.dense_units, config.dropout, dropout_first=True)
    return keras.Model(inputs, outputs, name=BASELINE)


def _input_arithmetic(x: keras.KerasTensor, mode: str) -> keras.KerasTensor:
    """[0, 1] gray-as-RGB pixels to what a backbone's weights expect, with serialisable layers."""
    if mode == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name="backbone_preprocess")(x)
    if mode == "raw255":
        return keras.layers.Rescaling(255.0, name="backbone_preprocess")(x)
    if mode == "torch":
        return keras.layers.Normalization(mean=_IMAGENET_MEAN_RGB, variance=[s * s for s in _IMAGENET_STD_RGB],
                                          name="backbone_preprocess")(x)
    if mode == "caffe":
        x = keras.layers.Rescaling(255.0, name="backbone_to_255")(x)
        return keras.layers.Normalization(mean=_CAFFE_MEAN_BGR, variance=[1.0, 1.0, 1.0], name="backbone_preprocess")(x)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def local_weights_file(weights: str, workdir: str) -> str:
    """A local path to the weights file, copying a gs:// (or other remote) file into `workdir`.

    Raises:
        ValueError: "imagenet" (or any hub name) without a file.
        FileNotFoundError: the file does not exist.
    """
    if weights.lower() == "imagenet":
        raise ValueError(
            f"weights={weights!r}: radflow never downloads weights at run time. Download the backbone's "
            "no-top weights once (e.g. keras.applications.MobileNetV2(include_top=False, weights='imagenet')"
            ".save_weights('mobilenet_v2.weights.h5') on a machine with internet, or Keras' "
            "*_notop.h5 release file), put the file on local disk or gs://, and pass its path as weights")
    if not fileio.exists(weights):
        raise FileNotFoundError(f"weights file {weights} not found")
    if not fileio.is_remote(weights):
        return weights
    local = os.path.join(workdir, os.path.basename(weights))  # keep the name: Keras reads the format from it
    fileio.copy_file(weights, local)
    return local


def build_backbone_model(metadata: ex.DatasetMetadata, config: TrainConfig, bias: list[float]) -> keras.Model:
    """A keras.applications backbone with the head GAP -> Dense -> Dropout -> output.

    Raises:
        ValueError: unknown backbone, an input smaller than it accepts, or weights="imagenet".
    """
    spec = BACKBONES.get(config.model)
    if spec is None:
        raise ValueError(f"unknown model {config.model!r}; choose {BASELINE} or one of {sorted(BACKBONES)}")
    if metadata.image_size < spec.min_size:
        raise ValueError(f"{config.model} needs images of at least {spec.min_size} px; "
                         f"the examples are {metadata.image_size} px")
    inputs = keras.Input((metadata.image_size, metadata.image_size, metadata.channels), name="image")
    x = inputs
    if metadata.channels == 1:
        # The pretrained filters expect three channels; repeating gray keeps ImageNet statistics intact.
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    elif metadata.channels != 3:
        raise ValueError(f"backbones take 1 or 3 channels, the examples have {metadata.channels}")
    x = _input_arithmetic(x, spec.preprocess)
    backbone = spec.build(include_top=False, weights=None, input_tensor=x)
    if config.weights.lower() != NO_WEIGHTS:
        with tempfile.TemporaryDirectory() as tmp:
            path = local_weights_file(config.weights, tmp)
            try:  # what keras.applications does with a weights path, with Keras' many-line refusal made one line
                backbone.load_weights(path)
            except ValueError as err:
                raise ValueError(_weights_mismatch(config, path, backbone)) from err
    outputs = _head(backbone.output, metadata, bias, config.dense_units, config.dropout, dropout_first=False)
    return keras.Model(inputs, outputs, name=config.model)


def _weights_mismatch(config: TrainConfig, path: str, backbone: keras.Model) -> str:
    """Why a weights file does not fit the backbone, as expected against found: its weight arrays."""
    import h5py

    arrays: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) else None)
    return (f"train.weights: {config.weights} is not a {config.model} no-top weights file: expected the "
            f"{len(backbone.weights)} weight arrays of {config.model} without its top, found {len(arrays)} "
            "(another backbone's, or one saved with its top)")


def build_model(metadata: ex.DatasetMetadata, config: TrainConfig, bias: list[float]) -> keras.Model:
    """The model config.model names, with `bias` as the output layer's initial bias.

    Raises:
        ValueError: unknown model, or weights given for the baseline CNN.
    """
    if config.model == BASELINE:
        if config.weights.lower() != NO_WEIGHTS:
            raise ValueError(f"the {BASELINE} has no pretrained weights; use weights: none")
        return build_baseline_cnn(metadata, config, bias)
    return build_backbone_model(metadata, config, bias)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's own layers in order: everything between the input arithmetic and the head."""
    names = [layer.name for layer in model.layers]
    start = names.index("backbone_preprocess") + 1
    end = names.index("head_pool")
    return model.layers[start:end]


def is_pretrained(config: TrainConfig) -> bool:
    return config.model != BASELINE and config.weights.lower() != NO_WEIGHTS


def set_trainable(model: keras.Model, config: TrainConfig, phase: str) -> None:
    """Freezes and unfreezes for a training phase.

    Phase "head": a pretrained backbone is frozen and only the head learns. Phase "fine_tune": the
    top `unfreeze_layers` backbone layers (or those named `unfreeze_block`...) learn too. In
    every phase of a pretrained backbone its BatchNormalization layers stay frozen, which in
    Keras 3 also runs them in inference mode: their ImageNet statistics are not overwritten by
    small, differently distributed batches. Baseline and randomly initialised backbones train
    every layer.

    Raises:
        ValueError: unknown phase, or an unfreeze_block that names no layer.
    """
    if phase not in ("head", "fine_tune"):
        raise ValueError(f"unknown phase {phase!r}")
    if not is_pretrained(config):
        for layer in model.layers:
            layer.trainable = True
        return
    layers = backbone_layers(model)
    if phase == "head":
        unfrozen: list[keras.layers.Layer] = []
    elif config.unfreeze_block:
        unfrozen = [layer for layer in layers if layer.name.startswith(config.unfreeze_block)]
        if not unfrozen:
            raise ValueError(f"unfreeze_block {config.unfreeze_block!r} names no layer of {config.model}")
    else:
        unfrozen = layers[len(layers) - config.unfreeze_layers:] if config.unfreeze_layers > 0 else []
    chosen = {id(layer) for layer in unfrozen}
    for layer in layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)


def last_conv_layer_name(model: keras.Model) -> str:
    """The layer Grad-CAM reads: the last one with a 4-D output that is not a pooling layer.

    Raises:
        ValueError: the model has no spatial layer.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, (*_POOLING, keras.layers.InputLayer)):
            continue
        if len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output")
