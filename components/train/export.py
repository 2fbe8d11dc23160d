"""The export contract: a SavedModel for TF Serving, with the Keras model kept beside it.

    OUT/saved_model/                      what push publishes as <serving_root>/<name>/<version>/
        signatures  serving_default  image_bytes  tf.string  [N]  -> scores, classes, threshold
                    serving_pixels   pixels       float32    [N, size, size, C] in [0, 1] -> same outputs
        assets/labels.txt             class names, one a line, in score order
        assets/threshold.txt          the operating threshold, read at request time (push rewrites it)
        assets.extra/tf_serving_warmup_requests   PredictionLog records TF Serving replays on load
    OUT/model.keras                       the trained Keras model, for explanation (Grad-CAM)

`serving_default` decodes and standardises in the graph with `radflow.preprocessing`, the very
functions the training input pipeline runs, so a client sends file bytes and nothing else.
`serving_pixels` serves callers that already hold the preprocessed tensor (batch scoring from
the TFRecords), skipping the decode.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from radflow import examples as ex
from radflow import fileio
from radflow.preprocessing import preprocess_encoded

SAVED_MODEL_DIR = "saved_model"  # the servable: what push publishes as <serving_root>/<name>/<version>/
KERAS_MODEL_FILE = "model.keras"  # kept beside the export for explanation (Grad-CAM)
LABELS_ASSET = "labels.txt"  # in saved_model/assets/, one class name per line, in score order
THRESHOLD_ASSET = "threshold.txt"  # in saved_model/assets/: the operating threshold, rewritten by push
SERVING_INPUT = "image_bytes"  # serving_default's input
PIXELS_INPUT = "pixels"  # serving_pixels' input
SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"
SCORES, CLASSES, THRESHOLD = "scores", "classes", "threshold"
WARMUP_DIR, WARMUP_FILE = "assets.extra", "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 8)  # one record per batch size clients send, so each shape is traced before traffic


class _ServingModule(tf.Module):
    """The exported graph: the Keras model behind the shared preprocessing.

    The decision threshold is read from an asset file at request time rather than baked into
    the graph, because it is chosen after training (on the validation split) and written into
    the version directory when the model is pushed; the server then answers with the same
    threshold every client applies.
    """

    def __init__(self, model: keras.Model, metadata: ex.DatasetMetadata, threshold_file: str):
        super().__init__()
        self.model = model
        self.threshold_asset = tf.saved_model.Asset(threshold_file)
        self._size, self._channels, self._policy = metadata.image_size, metadata.channels, metadata.resize_policy
        self._names = list(metadata.label_names)
        self.serve_pixels = tf.function(self._serve_pixels, input_signature=[
            tf.TensorSpec([None, self._size, self._size, self._channels], tf.float32, name=PIXELS_INPUT)])

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = tf.cast(self.model(images, training=False), tf.float32)
        scores = tf.concat([1.0 - probs, probs], axis=1) if len(self._names) == 2 else probs
        n = tf.shape(scores)[0]
        threshold = tf.strings.to_number(tf.strings.strip(tf.io.read_file(self.threshold_asset)), tf.float32)
        return {
            SCORES: scores,
            CLASSES: tf.tile(tf.constant(self._names)[None, :], [n, 1]),
            THRESHOLD: tf.fill([n], threshold),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_encoded(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda b: preprocess_encoded(b, self._size, self._channels, self._policy),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self._size, self._size, self._channels], tf.float32),
        )
        return self._outputs(images)

    def _serve_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(pixels)


def warmup_images(metadata: ex.DatasetMetadata) -> list[bytes]:
    """PNG-encoded gray ramps at the model's size: valid inputs that exercise the whole graph."""
    ramp = np.linspace(0, 255, metadata.image_size, dtype=np.float32)
    image = np.broadcast_to((ramp[None, :] + ramp[:, None]) / 2, (metadata.image_size, metadata.image_size))
    pixels = np.repeat(image.astype(np.uint8)[:, :, None], metadata.channels, axis=2)
    return [tf.io.encode_png(pixels).numpy()]


def warmup_records(metadata: ex.DatasetMetadata) -> list[bytes]:
    """Serialized PredictionLogs for serving_default, one per batch size in WARMUP_BATCH_SIZES."""
    png = warmup_images(metadata)[0]
    records = []
    for n in WARMUP_BATCH_SIZES:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=SERVING_SIGNATURE))
        request.inputs[SERVING_INPUT].CopyFrom(tf.make_tensor_proto([png] * n, dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_serving(model: keras.Model, metadata: ex.DatasetMetadata, path: str, threshold: float = 0.5) -> None:
    """Writes the SavedModel described in the module docstring to `path`.

    Outputs of both signatures: `scores`, float32 (N, K), one probability per class; `classes`,
    tf.string (N, K), the class names in score order; `threshold`, float32 (N,), the operating
    threshold on the positive-class score (binary models).
    """
    with tempfile.TemporaryDirectory() as tmp:
        staged = os.path.join(tmp, THRESHOLD_ASSET)
        with open(staged, "w") as f:
            f.write(f"{threshold}\n")
        module = _ServingModule(model, metadata, staged)
        tf.saved_model.save(module, path, signatures={SERVING_SIGNATURE: module.serve_encoded,
                                                      PIXELS_SIGNATURE: module.serve_pixels})
    fileio.write_text_atomic(os.path.join(path, "assets", LABELS_ASSET), "\n".join(metadata.label_names) + "\n")
    warmup = os.path.join(path, WARMUP_DIR, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(warmup))
    with tf.io.TFRecordWriter(warmup) as writer:
        for record in warmup_records(metadata):
            writer.write(record)


def read_labels(saved_model_dir: str) -> list[str]:
    """The class names of an exported model, in score order."""
    return fileio.read_text(os.path.join(saved_model_dir, "assets", LABELS_ASSET)).splitlines()
