"""The example format: the one definition of what ingest writes and every later stage reads.

An examples directory holds TFRecord shards of `tf.train.Example` (one per image, already decoded
and standardised to `image_size` x `image_size` x `channels` uint8 pixels) and `metadata.json`,
which carries the label names in their fixed order. `metadata.json` is written last, so a
directory without it is an unfinished ingest and is refused by `read_metadata`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from radflow import fileio

SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.csv"
SHARD_SUFFIX = ".tfrecord"
# `radflow synth` leaves this JSON file ({"modality": ...}) at the root of what it writes; ingest records
# the data as synthetic, and the model card says so. A dot file, so it is never an input.
SYNTHETIC_MARKER = ".radflow-synthetic.json"

# Feature keys. Per-image scalar features ride along with the pixels so that TFDV can compute
# their statistics without decoding images again.
IMAGE = "image"  # raw uint8 pixels, row-major, image_size * image_size * channels bytes
LABEL = "label"  # int64 index into DatasetMetadata.label_names
LABEL_NAME = "label_name"
ORIG_HEIGHT = "orig_height"
ORIG_WIDTH = "orig_width"
SOURCE_FORMAT = "source_format"  # "JPEG", "PNG", ...
BIT_DEPTH = "bit_depth"  # bits per sample of the source (8, 16, 12 for most DICOM)
ASPECT_RATIO = "aspect_ratio"  # orig_width / orig_height
PATIENT_KEY = "patient_key"  # keyed hash of the patient id: groups images without naming anyone
# Intensity statistics of the decoded source image (before padding), scaled to [0, 255].
MEAN_INTENSITY = "mean_intensity"
STD_INTENSITY = "std_intensity"
P05_INTENSITY = "p05_intensity"
P50_INTENSITY = "p50_intensity"
P95_INTENSITY = "p95_intensity"
NEAR_BLACK_FRACTION = "near_black_fraction"  # share of pixels <= NEAR_BLACK
NEAR_WHITE_FRACTION = "near_white_fraction"  # share of pixels >= NEAR_WHITE
NEAR_BLACK, NEAR_WHITE = 5, 250

# Allow-listed DICOM header fields (see radflow.dicom.ALLOWED_HEADER_FIELDS) stored per image, "" for
# other formats. BitsStored, also allow-listed, is stored as BIT_DEPTH. No other header field is written.
DICOM_MODALITY = "dicom_modality"
DICOM_PHOTOMETRIC = "dicom_photometric_interpretation"
DICOM_VIEW_POSITION = "dicom_view_position"
DICOM_BODY_PART = "dicom_body_part_examined"
DICOM_MANUFACTURER = "dicom_manufacturer"
HEADER_FEATURES = {
    "Modality": DICOM_MODALITY,
    "PhotometricInterpretation": DICOM_PHOTOMETRIC,
    "ViewPosition": DICOM_VIEW_POSITION,
    "BodyPartExamined": DICOM_BODY_PART,
    "Manufacturer": DICOM_MANUFACTURER,
}

# The scalar features, as TFDV and the schema see them.
SCALAR_FEATURES = {
    LABEL: tf.int64,
    LABEL_NAME: tf.string,
    ORIG_HEIGHT: tf.int64,
    ORIG_WIDTH: tf.int64,
    SOURCE_FORMAT: tf.string,
    BIT_DEPTH: tf.int64,
    ASPECT_RATIO: tf.float32,
    PATIENT_KEY: tf.string,
    MEAN_INTENSITY: tf.float32,
    STD_INTENSITY: tf.float32,
    P05_INTENSITY: tf.float32,
    P50_INTENSITY: tf.float32,
    P95_INTENSITY: tf.float32,
    NEAR_BLACK_FRACTION: tf.float32,
    NEAR_WHITE_FRACTION: tf.float32,
}


@dataclass(frozen=True)
class ImageFeatures:
    """Per-image facts stored beside the pixels, for validation, drift checks and grouping.

    Args:
        orig_height: height of the image as found, before standardising.
        orig_width: width as found.
        source_format: the decoded file's format, e.g. "JPEG".
        bit_depth: bits per sample of the source.
        patient_key: keyed hash of the patient id ("" when unknown).
        mean, std, p05, p50, p95: intensity statistics of the source pixels on a 0-255 scale.
        near_black, near_white: share of source pixels <= NEAR_BLACK and >= NEAR_WHITE.
        header: allow-listed DICOM header fields (keys of HEADER_FEATURES); empty for other formats.
    """

    orig_height: int
    orig_width: int
    source_format: str
    bit_depth: int = 8
    patient_key: str = ""
    mean: float = 0.0
    std: float = 0.0
    p05: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    near_black: float = 0.0
    near_white: float = 0.0
    header: dict[str, str] = field(default_factory=dict)

    @classmethod
    def measure(
        cls, pixels: np.ndarray, source_format: str, bit_depth: int = 8, patient_key: str = "",
        header: dict[str, str] | None = None, histogram: np.ndarray | None = None,
    ) -> ImageFeatures:
        """Measures decoded source pixels (H, W, C), scaled to 0-255 whatever their dtype.

        Args:
            pixels: the decoded source image.
            source_format: its format, e.g. "JPEG".
            bit_depth: bits per sample of the source.
            patient_key: keyed hash of the patient id.
            header: allow-listed DICOM header fields.
            histogram: `intensity_histogram(pixels)` of uint8 pixels when the caller computed it
                already (ingest does, in its decode graph); computed here otherwise.

        Returns:
            The image's features.
        """
        if pixels.dtype == np.uint8:
            hist = intensity_histogram(pixels).numpy() if histogram is None else histogram
            stats = _histogram_stats(hist)
        else:
            stats = _scaled_stats(pixels)
        return cls(orig_height=int(pixels.shape[0]), orig_width=int(pixels.shape[1]), source_format=source_format,
                   bit_depth=bit_depth, patient_key=patient_key, header=dict(header or {}), **stats)


def intensity_histogram(pixels: tf.Tensor) -> tf.Tensor:
    """The 256-bin histogram of uint8 pixels, as TensorFlow ops: ingest runs it inside its decode
    graph, where it costs a third less than numpy's bincount and does not hold the GIL."""
    values = tf.cast(tf.reshape(pixels, [-1]), tf.int32)
    return tf.math.bincount(values, minlength=256, maxlength=256, dtype=tf.int64)


def _scaled_stats(pixels: np.ndarray) -> dict[str, float]:
    """Intensity statistics of wider-than-8-bit pixels, scaled to 0-255."""
    scaled = pixels.astype(np.float32) * (255.0 / np.iinfo(pixels.dtype).max)
    p05, p50, p95 = np.percentile(scaled, [5, 50, 95])
    return {"mean": float(scaled.mean()), "std": float(scaled.std()), "p05": float(p05), "p50": float(p50),
            "p95": float(p95), "near_black": float((scaled <= NEAR_BLACK).mean()),
            "near_white": float((scaled >= NEAR_WHITE).mean())}


def _histogram_stats(histogram: np.ndarray) -> dict[str, float]:
    """The same statistics for uint8 pixels from their 256-bin histogram: the same values as
    np.percentile's linear interpolation, without sorting a megapixel image (ingest measures every image)."""
    hist = np.asarray(histogram, dtype=np.float64)
    n = hist.sum()
    values = np.arange(256, dtype=np.float64)
    cum = np.cumsum(hist)
    mean = float(hist @ values / n)

    def percentile(q: float) -> float:
        rank = q / 100 * (n - 1)
        lo, hi = np.searchsorted(cum, [np.floor(rank), np.ceil(rank)], side="right")
        return float(lo + (hi - lo) * (rank - np.floor(rank)))

    return {"mean": mean, "std": float(np.sqrt(hist @ (values - mean) ** 2 / n)), "p05": percentile(5),
            "p50": percentile(50), "p95": percentile(95), "near_black": float(hist[: NEAR_BLACK + 1].sum() / n),
            "near_white": float(hist[NEAR_WHITE:].sum() / n)}


@dataclass(frozen=True)
class DatasetMetadata:
    """What every consumer of an examples directory must agree on.

    Args:
        label_names: class names; the index of a name is its integer label.
        image_size: height and width of the stored pixels.
        channels: 1 for grayscale.
        counts: split -> label name -> number of examples.
        resize_policy: how sources became squares: "pad" (standardize's padding) or "crop" (centre
            square first); serving must apply the same policy.
        input_fingerprint: sha256 over the inputs' relative paths and content hashes.
        layout: the source layout ingest recognised ("kaggle", "class_per_folder", "manifest").
        states: input state -> number of inputs (ingested, quarantined, duplicate).
        quarantine_reasons: reason -> number of quarantined inputs.
        patient_key_id: a fingerprint of the patient-key secret (never the secret): equal ids mean
            patient keys of two ingests can be joined.
        verified_records: records ingest read back from the shards and matched one for one with
            the manifest's ingested rows before it wrote this file.
        patient_ids: where the ingested images' patient ids came from -> count ("manifest",
            "pattern", "dicom", and "none": images that are their own patient).
        image_level_splits: most images had no patient id and the run went on anyway
            (allow_image_level_splits): the splits may hold one patient's images on both sides.
        synthetic: the source was written by `radflow synth` (it leaves SYNTHETIC_MARKER).
        modality: what the images are ("chest X-ray", "brain MRI"), for the model card and the
            review page; "" when nobody said.
    """

    label_names: tuple[str, ...]
    image_size: int
    channels: int = 1
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    resize_policy: str = "pad"
    input_fingerprint: str = ""
    layout: str = ""
    states: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    patient_key_id: str = ""
    verified_records: int = 0
    patient_ids: dict[str, int] = field(default_factory=dict)
    image_level_splits: bool = False
    synthetic: bool = False
    modality: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def split_size(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetMetadata:
        raw = json.loads(text)
        return cls(
            label_names=tuple(raw["label_names"]),
            image_size=int(raw["image_size"]),
            channels=int(raw["channels"]),
            counts={s: {k: int(v) for k, v in c.items()} for s, c in raw["counts"].items()},
            resize_policy=raw.get("resize_policy", "pad"),
            input_fingerprint=raw.get("input_fingerprint", ""),
            layout=raw.get("layout", ""),
            states={k: int(v) for k, v in raw.get("states", {}).items()},
            quarantine_reasons={k: int(v) for k, v in raw.get("quarantine_reasons", {}).items()},
            patient_key_id=raw.get("patient_key_id", ""),
            verified_records=int(raw.get("verified_records", 0)),
            patient_ids={k: int(v) for k, v in raw.get("patient_ids", {}).items()},
            image_level_splits=bool(raw.get("image_level_splits", False)),
            synthetic=bool(raw.get("synthetic", False)),
            modality=str(raw.get("modality", "")),
        )


def feature_spec(metadata: DatasetMetadata) -> dict[str, tf.io.FixedLenFeature]:
    """The parsing spec for one serialized example."""
    spec = {key: tf.io.FixedLenFeature([], dtype) for key, dtype in SCALAR_FEATURES.items()}
    spec.update({key: tf.io.FixedLenFeature([], tf.string, default_value="") for key in HEADER_FEATURES.values()})
    spec[IMAGE] = tf.io.FixedLenFeature([], tf.string)
    return spec


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def make_example(pixels: np.ndarray, label: int, label_name: str, info: ImageFeatures) -> bytes:
    """Serializes one standardised image and its per-image features.

    Args:
        pixels: uint8 array of shape (size, size, channels), the output of `standardize`.
        label: integer label, the index of `label_name`.
        label_name: the class name.
        info: facts about the source image.

    Returns:
        The serialized `tf.train.Example`.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"pixels must be uint8 HxWxC, got {pixels.dtype} {pixels.shape}")
    disallowed = set(info.header) - set(HEADER_FEATURES)
    if disallowed:  # defence in depth: only allow-listed header fields may reach an example
        raise ValueError(f"header fields {sorted(disallowed)} are not allow-listed: {sorted(HEADER_FEATURES)}")
    features = {
        IMAGE: _bytes(pixels.tobytes()),
        LABEL: _int(label),
        LABEL_NAME: _bytes(label_name.encode()),
        ORIG_HEIGHT: _int(info.orig_height),
        ORIG_WIDTH: _int(info.orig_width),
        SOURCE_FORMAT: _bytes(info.source_format.encode()),
        BIT_DEPTH: _int(info.bit_depth),
        ASPECT_RATIO: _float(info.orig_width / info.orig_height),
        PATIENT_KEY: _bytes(info.patient_key.encode()),
        MEAN_INTENSITY: _float(info.mean),
        STD_INTENSITY: _float(info.std),
        P05_INTENSITY: _float(info.p05),
        P50_INTENSITY: _float(info.p50),
        P95_INTENSITY: _float(info.p95),
        NEAR_BLACK_FRACTION: _float(info.near_black),
        NEAR_WHITE_FRACTION: _float(info.near_white),
        **{key: _bytes(info.header.get(name, "").encode()) for name, key in HEADER_FEATURES.items()},
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_examples(serialized: tf.Tensor, metadata: DatasetMetadata) -> dict[str, tf.Tensor]:
    """Parses a batch of serialized examples; `image` comes back as uint8 (N, size, size, C)."""
    parsed = tf.io.parse_example(serialized, feature_spec(metadata))
    shape = [-1, metadata.image_size, metadata.image_size, metadata.channels]
    parsed[IMAGE] = tf.reshape(tf.io.decode_raw(parsed[IMAGE], tf.uint8), shape)
    return parsed


def shard_pattern(examples_dir: str, split: str) -> str:
    """The glob that matches a split's shards."""
    return os.path.join(examples_dir, split, f"*{SHARD_SUFFIX}")


def split_files(examples_dir: str, split: str) -> list[str]:
    """The shards of one split, sorted so that reading order is reproducible."""
    return sorted(tf.io.gfile.glob(shard_pattern(examples_dir, split)))


def read_metadata(examples_dir: str) -> DatasetMetadata:
    """Reads metadata.json.

    Raises:
        FileNotFoundError: the directory is not a finished ingest output.
    """
    path = os.path.join(examples_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {examples_dir} is not a complete examples directory "
            "(ingest writes metadata.json last, so an interrupted ingest has none)"
        )
    return DatasetMetadata.from_json(fileio.read_text(path))


def write_metadata(examples_dir: str, metadata: DatasetMetadata) -> None:
    fileio.write_text_atomic(os.path.join(examples_dir, METADATA_FILE), metadata.to_json())


def iter_split(
    examples_dir: str, split: str, metadata: DatasetMetadata, batch_size: int = 256
) -> Iterator[dict[str, np.ndarray]]:
    """Yields a split in order as numpy batches; for evaluation and small tools, not training."""
    files = split_files(examples_dir, split)
    if not files:
        return
    ds = tf.data.TFRecordDataset(files).batch(batch_size)
    for batch in ds.map(lambda s: parse_examples(s, metadata)):
        yield {k: v.numpy() for k, v in batch.items()}


def concat_batches(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates the batches of `iter_split` into whole arrays (empty dict for no batches)."""
    batches = list(batches)
    if not batches:
        return {}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
