"""ingest: a folder of labelled images -> standardised TFRecord examples, split by patient.

Runs as an Apache Beam pipeline (DirectRunner on one machine; Dataflow, Flink or Spark through
`runner` and `beam_args`). Every input file ends in exactly one state, recorded in
`manifest.csv`: ingested, quarantined (with the reason) or duplicate. `metadata.json` is written
last, after the accounting checks, so a failed ingest never looks complete.

    radflow ingest data/chest_xray runs/examples
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image, UnidentifiedImageError

from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.preprocessing import decode_image, standardize

log = logging.getLogger(__name__)

INGESTED, QUARANTINED, DUPLICATE = "ingested", "quarantined", "duplicate"
MANIFEST_COLUMNS = ("path", "label", "split", "state", "reason", "patient_id")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
# Formats TensorFlow's decoder (and hence the serving signature) can read.
DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}
TARGET_SHARD_BYTES = 150 * 2**20  # aim for ~150 MB shards: large enough to stream well, small enough to parallelise

# Kaggle chest-xray-pneumonia file names carry the patient: person1_bacteria_1.jpeg,
# person1_virus_6.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-0200-0001.jpeg.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$", re.IGNORECASE),
)


@dataclass(frozen=True)
class SourceFile:
    """One input file and what the listing alone can tell about it."""

    path: str
    label: str
    split: str
    patient_id: str


@dataclass(frozen=True)
class IngestResult:
    examples_dir: str
    metadata: ex.DatasetMetadata
    states: dict[str, int] = field(default_factory=dict)  # state -> number of inputs
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> number of inputs

    @property
    def total(self) -> int:
        return sum(self.states.values())


def patient_id(path: str) -> str:
    """The patient a file belongs to, parsed from a Kaggle-style name; else the file is its own group."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def split_fraction(patient: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per (patient, seed): adding files never moves a patient."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def list_sources(source: str, config: IngestConfig) -> tuple[list[SourceFile], tuple[str, ...]]:
    """Lists the image files under `source` and assigns each a label and a patient-disjoint split.

    Two layouts are recognised: Kaggle's `{train,val,test}/<class>/...` and class-per-folder
    `<class>/...`. In the Kaggle layout the official test folder is kept as the test split (a
    patient with any image there is a test patient) and the tiny official val folder is merged
    into train, from which a patient-disjoint validation split is carved.

    Args:
        source: a local directory or gs:// prefix.
        config: split fractions, seed and label order.

    Returns:
        The files, and the label names in label order.

    Raises:
        FileNotFoundError: `source` does not exist or holds no class folders.
    """
    if not tf.io.gfile.isdir(source):
        raise FileNotFoundError(f"ingest source {source!r} is not a readable directory")
    top = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(source) if tf.io.gfile.isdir(os.path.join(source, d)))
    kaggle = bool(top) and all(d.lower() in ex.SPLITS for d in top)
    entries: list[tuple[str, str, str | None]] = []  # (path, class folder, official split)
    for folder in top:
        roots = (
            [(os.path.join(source, folder, c.rstrip("/")), c.rstrip("/"), folder.lower())
             for c in sorted(tf.io.gfile.listdir(os.path.join(source, folder)))
             if tf.io.gfile.isdir(os.path.join(source, folder, c))]
            if kaggle else [(os.path.join(source, folder), folder, None)]
        )
        for root, label, official in roots:
            for dirpath, _, files in tf.io.gfile.walk(root):
                entries.extend((os.path.join(dirpath, f), label, official) for f in sorted(files)
                               if not f.startswith("."))
    if not entries:
        raise FileNotFoundError(f"ingest source {source!r} has no class folders with files in them")

    labels = config.labels or tuple(sorted({label for _, label, _ in entries}))
    test_patients = {patient_id(p) for p, _, official in entries if official == "test"}
    files = []
    for path, label, _ in sorted(entries):
        patient = patient_id(path)
        u = split_fraction(patient, config.seed)
        if kaggle:
            split = "test" if patient in test_patients else ("val" if u < config.val_fraction else "train")
        else:
            split = ("test" if u < config.test_fraction
                     else "val" if u < config.test_fraction + config.val_fraction else "train")
        files.append(SourceFile(path, label, split, patient))
    return files, labels


@dataclass(frozen=True)
class _Decoded:
    """The outcome of reading one file: pixels and features, or the reason it was quarantined."""

    source: SourceFile
    reason: str = ""
    pixel_hash: str = ""
    example: bytes = b""


def pixel_checksum(pixels: np.ndarray) -> str:
    """The identity used for exact-duplicate detection: the decoded pixels and their shape."""
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def patient_key(patient: str, key: str) -> str:
    """A keyed hash of the patient id: stable for grouping, meaningless without the key."""
    return hmac.new(key.encode(), patient.encode(), hashlib.sha256).hexdigest()[:32]


def decode_file(source: SourceFile, labels: tuple[str, ...], size: int, channels: int, key: str = "") -> _Decoded:
    """Reads, decodes and standardises one file; never raises for a bad file.

    Decoding uses the same `decode_image` as the serving signature, so that what was trained on
    is what the server will see for the same bytes.
    """
    if source.label not in labels:
        return _Decoded(source, reason=f"unknown class {source.label!r}")
    try:
        with tf.io.gfile.GFile(source.path, "rb") as f:
            data = f.read()
    except (OSError, tf.errors.OpError) as err:
        return _Decoded(source, reason=f"unreadable: {err}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except UnidentifiedImageError:
        return _Decoded(source, reason="not an image")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged headers
        return _Decoded(source, reason=f"corrupt header: {err}")
    if fmt not in DECODABLE_FORMATS:
        return _Decoded(source, reason=f"unsupported format {fmt}")
    try:
        pixels = decode_image(tf.constant(data), channels)
    except tf.errors.InvalidArgumentError as err:
        return _Decoded(source, reason=f"corrupt or truncated {fmt}: {err.message.splitlines()[0]}")
    decoded = pixels.numpy()
    info = ex.ImageFeatures.measure(decoded, fmt, bit_depth=8, patient_key=patient_key(source.patient_id, key))
    example = ex.make_example(standardize(pixels, size).numpy(), labels.index(source.label), source.label, info)
    return _Decoded(source, pixel_hash=pixel_checksum(decoded), example=example)


def _resolve_duplicates(item: tuple[str, list[_Decoded]]):
    """Keeps the first file (by path) of a set of identical images; the others become duplicates."""
    _, group = item
    group = sorted(group, key=lambda d: d.source.path)
    keep = group[0]
    yield "example", (keep.source.split, keep.example)
    yield "row", _row(keep.source, INGESTED, "")
    for dup in group[1:]:
        where = ("" if dup.source.split == keep.source.split
                 else f" (in split {keep.source.split}, not {dup.source.split})")
        yield "row", _row(dup.source, DUPLICATE, f"identical pixels to {keep.source.path}{where}")


def _row(source: SourceFile, state: str, reason: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(
        [source.path, source.label, source.split, state, reason, source.patient_id])
    return buf.getvalue()


def _route(decoded: _Decoded):
    if decoded.reason:
        yield beam.pvalue.TaggedOutput("quarantined", _row(decoded.source, QUARANTINED, decoded.reason))
    else:
        yield decoded.pixel_hash, decoded


def _num_shards(n_examples: int, config: IngestConfig) -> int:
    example_bytes = config.image_size**2 * config.channels + 256
    return max(1, math.ceil(n_examples * example_bytes / TARGET_SHARD_BYTES))


def ingest(source: str, out_dir: str, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Decodes, standardises, deduplicates and splits the images under `source` into `out_dir`.

    Args:
        source: a directory (local or gs://) in Kaggle or class-per-folder layout.
        out_dir: where the split shards, manifest.csv and metadata.json go; must not already
            hold a finished ingest.
        config: image size, splits and the Beam runner.

    Returns:
        The metadata written and the accounting of every input.

    Raises:
        FileNotFoundError: `source` is missing or empty.
        FileExistsError: `out_dir` already holds a finished ingest.
        RuntimeError: more inputs than `config.max_quarantined_fraction` were quarantined.
    """
    if tf.io.gfile.exists(os.path.join(out_dir, ex.METADATA_FILE)):
        raise FileExistsError(f"{out_dir} already holds a finished ingest; choose a new output directory")
    files, labels = list_sources(source, config)
    planned = Counter(f.split for f in files)
    log.info("ingest: %d files, labels %s, planned split sizes %s", len(files), labels, dict(planned))

    options = PipelineOptions(
        [f"--runner={config.runner}", *config.beam_args],
        direct_running_mode="multi_processing",
        direct_num_workers=0,  # all cores
    )
    size, channels = config.image_size, config.channels
    with beam.Pipeline(options=options) as p:
        decoded = (
            p
            | "ListFiles" >> beam.Create(files)
            | "Reshuffle" >> beam.Reshuffle()  # spread the decode work over all workers
            | "Decode" >> beam.Map(decode_file, labels, size, channels, config.patient_key_secret)
            | "Route" >> beam.FlatMap(_route).with_outputs("quarantined", main="ok")
        )
        resolved = (
            decoded.ok
            | "GroupIdentical" >> beam.GroupByKey()
            | "Deduplicate" >> beam.FlatMap(_resolve_duplicates)
        )
        rows = (resolved | "Rows" >> beam.Filter(lambda kv: kv[0] == "row") | beam.Map(lambda kv: kv[1]))
        examples = resolved | "Examples" >> beam.Filter(lambda kv: kv[0] == "example") | beam.Map(lambda kv: kv[1])
        for split in ex.SPLITS:
            (
                examples
                | f"Select{split}" >> beam.Filter(lambda kv, s=split: kv[0] == s)
                | f"Serialized{split}" >> beam.Map(lambda kv: kv[1])
                | f"Write{split}" >> beam.io.WriteToTFRecord(
                    os.path.join(out_dir, split, split),
                    file_name_suffix=ex.SHARD_SUFFIX,
                    num_shards=_num_shards(planned[split], config),
                )
            )
        (
            (rows, decoded.quarantined)
            | "AllRows" >> beam.Flatten()
            | "WriteManifest" >> beam.io.WriteToText(
                os.path.join(out_dir, ex.MANIFEST_FILE),
                header=",".join(MANIFEST_COLUMNS),
                num_shards=1,
                shard_name_template="",
            )
        )
    return _finish(out_dir, files, labels, config)


def read_manifest(examples_dir: str) -> list[dict[str, str]]:
    """The manifest rows, one per input file, sorted by path."""
    with tf.io.gfile.GFile(os.path.join(examples_dir, ex.MANIFEST_FILE)) as f:
        return sorted(csv.DictReader(f), key=lambda r: r["path"])


def _finish(out_dir: str, files: list[SourceFile], labels: tuple[str, ...], config: IngestConfig) -> IngestResult:
    """Checks the accounting, then publishes metadata.json: the mark of a complete ingest."""
    rows = read_manifest(out_dir)
    if len(rows) != len(files):
        raise RuntimeError(f"ingest accounted for {len(rows)} of {len(files)} input files")
    states = Counter(r["state"] for r in rows)
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["state"] == QUARANTINED)
    quarantined = states[QUARANTINED] / len(rows)
    for r in rows:
        if r["state"] == QUARANTINED:
            log.warning("quarantined %s: %s", r["path"], r["reason"])
    if quarantined > config.max_quarantined_fraction:
        raise RuntimeError(
            f"{states[QUARANTINED]} of {len(rows)} inputs ({quarantined:.1%}) were quarantined, above "
            f"max_quarantined_fraction={config.max_quarantined_fraction:.0%}; reasons: {dict(reasons)}. "
            f"See {os.path.join(out_dir, ex.MANIFEST_FILE)}"
        )
    counts = {s: {name: 0 for name in labels} for s in ex.SPLITS}
    for r in rows:
        if r["state"] == INGESTED:
            counts[r["split"]][r["label"]] += 1
    metadata = ex.DatasetMetadata(labels, config.image_size, config.channels, counts)
    ex.write_metadata(out_dir, metadata)
    result = IngestResult(out_dir, metadata, dict(states), dict(reasons))
    log.info("ingest: %s; examples per split %s", dict(states), {s: metadata.split_size(s) for s in ex.SPLITS})
    return result
