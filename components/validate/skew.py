"""Serving skew: do the images the server receives look like the ones the model was trained on?

The serving request log hands `serving_skew` a batch of request images exactly as the
`serving_default` signature receives them (encoded bytes). Each is decoded and measured by
`ingest.measure_encoded`, the signature's own `decode_scaled` at the scale ingest decoded the
training images at (a large JPEG at 1/2 to 1/8) and the `ImageFeatures.measure` ingest uses, so a
feature means the same thing on both sides; the batch's TFDV statistics are then compared with the training
statistics push keeps beside the served version (<version>/radflow_lineage/train_statistics.pb).

    report = serving_skew(request_bytes, load_statistics(".../3/radflow_lineage/train_statistics.pb"))
    for line in report.describe(): log.warning(line)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from radflow import examples as ex
from radflow.components.ingest import ingest
from radflow.components.ingest.config import IngestConfig
from radflow.components.validate import drift as dr
from radflow.components.validate.config import DriftThresholds

SERVED_FORMATS = ("BMP", "GIF", "JPEG", "PNG")  # what serving_default's decode_image accepts (no DICOM)
# Requests carry no label, patient or DICOM header: the image-derived features are what can be compared.
REQUEST_FEATURES = tuple(f for f in ex.SCALAR_FEATURES if f not in (ex.LABEL, ex.LABEL_NAME, ex.PATIENT_KEY))


@dataclass(frozen=True)
class SkewReport:
    """A batch of requests compared with the training statistics.

    Args:
        num_images: images in the batch.
        undecodable: images the signature could not decode either (not measured).
        drifts: one per image feature, exceeded or not.
    """

    num_images: int
    undecodable: int
    drifts: list[dr.Drift]

    @property
    def exceeded(self) -> list[dr.Drift]:
        return [d for d in self.drifts if d.exceeded]

    def describe(self) -> list[str]:
        """One line per exceeded threshold, naming the feature, the limit and what was found."""
        name = f"serving requests ({self.num_images - self.undecodable} images) vs training"
        return [d.describe(name) for d in self.exceeded]


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Reads a binary DatasetFeatureStatisticsList, e.g. a published version's train statistics."""
    return tfdv.load_stats_binary(path)


def measure_encoded(image_bytes: bytes, channels: int = 1, image_size: int = IngestConfig.image_size,
                    resize_policy: str = "pad") -> ex.ImageFeatures:
    """The per-image features of one encoded image, computed by the code ingest uses.

    Args:
        image_bytes: a JPEG, PNG, BMP or GIF file's bytes, as the serving signature receives them.
        channels: the model's channels (metadata.json), 1 for grayscale.
        image_size: the examples' image size (metadata.json): a large JPEG is decoded, and measured,
            at the reduced scale ingest chose for that size.
        resize_policy: the examples' resize policy (metadata.json).

    Returns:
        The image's features (no patient key or DICOM header: a request has none).

    Raises:
        ValueError: the bytes are not an image the signature can decode.
    """
    # ingest's own format sniffing and measure, so a request is described as ingest described the
    # training images (`_source_format` is private there; the serving-skew tests break if it changes).
    source_format = ingest._source_format(image_bytes)
    if source_format not in SERVED_FORMATS:
        raise ValueError(f"not an image the serving signature decodes ({source_format or 'unknown format'})")
    try:
        return ingest.measure_encoded(image_bytes, image_size, channels, resize_policy).features
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"not a decodable {source_format}: {err.message}") from err


def request_statistics(
    features: Sequence[ex.ImageFeatures],
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV statistics of measured images, typed as the examples store them (int64, float32, string)."""
    rows = {
        ex.ORIG_HEIGHT: np.array([f.orig_height for f in features], np.int64),
        ex.ORIG_WIDTH: np.array([f.orig_width for f in features], np.int64),
        ex.SOURCE_FORMAT: [f.source_format for f in features],
        ex.BIT_DEPTH: np.array([f.bit_depth for f in features], np.int64),
        ex.ASPECT_RATIO: np.array([f.orig_width / f.orig_height for f in features], np.float32),
        ex.MEAN_INTENSITY: np.array([f.mean for f in features], np.float32),
        ex.STD_INTENSITY: np.array([f.std for f in features], np.float32),
        ex.P05_INTENSITY: np.array([f.p05 for f in features], np.float32),
        ex.P50_INTENSITY: np.array([f.p50 for f in features], np.float32),
        ex.P95_INTENSITY: np.array([f.p95 for f in features], np.float32),
        ex.NEAR_BLACK_FRACTION: np.array([f.near_black for f in features], np.float32),
        ex.NEAR_WHITE_FRACTION: np.array([f.near_white for f in features], np.float32),
    }
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame({k: rows[k] for k in REQUEST_FEATURES}))


def serving_skew(
    image_bytes: Sequence[bytes],
    train_statistics: statistics_pb2.DatasetFeatureStatisticsList,
    thresholds: DriftThresholds = DriftThresholds(),
    channels: int = 1,
    image_size: int = IngestConfig.image_size,
    resize_policy: str = "pad",
) -> SkewReport:
    """Compares a batch of serving requests with the training statistics.

    Args:
        image_bytes: the requests' encoded images (what `serving_default` receives as `image_bytes`).
        train_statistics: the training split's statistics (validate's statistics/train.pb, kept by push).
        thresholds: the drift limits (ValidateConfig.thresholds).
        channels: the model's channels.
        image_size: the examples' image size (metadata.json), which sets the scale a JPEG is measured at.
        resize_policy: the examples' resize policy.

    Returns:
        The per-feature drift; undecodable requests are counted, not measured.

    Raises:
        ValueError: no request in the batch could be decoded, so there is nothing to compare.
    """
    measured = []
    for data in image_bytes:
        try:
            measured.append(measure_encoded(data, channels, image_size, resize_policy))
        except ValueError:
            continue
    if not measured:
        raise ValueError(f"none of the {len(image_bytes)} request images could be decoded; nothing to compare")
    current = request_statistics(measured).datasets[0]
    drifts = dr.compare(current, train_statistics.datasets[0], thresholds)
    return SkewReport(len(image_bytes), len(image_bytes) - len(measured), drifts)
