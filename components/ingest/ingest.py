"""ingest: labelled images (JPEG, PNG 8/16-bit, DICOM) -> standardised TFRecord examples, split by patient.

Sources: a local folder, a gs:// prefix, a CSV manifest (`path,label[,patient_id][,split]`), or a PACS
over DICOMweb (`dicomweb+http(s)://...?QIDO filters` with a labels file; components/ingest/dicomweb.py).
Folder layouts: Kaggle's `{train,val,test}/<class>/...` and class-per-folder `<class>/...`, any
number of classes. Runs as an Apache Beam pipeline (DirectRunner on all cores by default; Dataflow,
Flink or Spark through `runner` and `beam_args`). Every input ends in exactly one state, recorded
in `manifest.csv`: ingested, quarantined (with the reason) or duplicate. `metadata.json` is written
last, after the accounting checks, so a failed ingest never looks complete.

    radflow ingest data/chest_xray runs/examples
    radflow ingest gs://bucket/cxr runs/examples --runner DataflowRunner --project p --region r
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from PIL import Image, UnidentifiedImageError

from radflow import admission, beam_runner, dicom, fileio
from radflow import examples as ex
from radflow.components.ingest import dicomweb
from radflow.components.ingest.config import PATIENT_ID_PRESETS, SPLIT_FOLDER_NAMES, IngestConfig
from radflow.pacs.connection import PacsHTTPError, PacsUnavailable
from radflow.preprocessing import decode_scaled, standardize_source

log = logging.getLogger(__name__)

INGESTED, QUARANTINED, DUPLICATE = "ingested", "quarantined", "duplicate"
# Quarantine reasons; a manifest reason is one of these, optionally followed by ": detail".
TRUNCATED, NOT_AN_IMAGE, UNSUPPORTED_FORMAT = dicom.TRUNCATED, dicom.NOT_AN_IMAGE, dicom.UNSUPPORTED_FORMAT
MULTI_FRAME, TOO_SMALL, UNKNOWN_CLASS = dicom.MULTI_FRAME, "too small", "unknown class"
TOO_MANY_PIXELS, CONSTANT = "too many pixels", "constant"  # refused by the admission rules serving applies too
UNREADABLE = "unreadable"  # listed, but could not be read (vanished, permissions)
# The manifest names original paths, so it is the run's record, never training data. It holds the
# keyed patient hash, not the patient id.
# example_sha256 (ingested rows only) is the sha256 of the serialized record: ingest reads every shard
# back and matches its records with these rows one for one before it writes metadata.json.
# patient_id_from says where the patient id came from: manifest, pattern, dicom or none (then the file is
# its own patient).
MANIFEST_COLUMNS = ("path", "label", "split", "state", "reason", "patient_key", "patient_id_from", "sha256",
                    "example_sha256")
READBACK_FILE = "readback.csv"  # written only when the read-back check fails: every input it affects
MANIFEST_INPUT_COLUMNS = ("path", "label", "patient_id", "split")  # a CSV source; patient_id and split optional
KAGGLE, CLASS_PER_FOLDER, MANIFEST = "kaggle", "class_per_folder", "manifest"
TARGET_SHARD_BYTES = 150 * 2**20  # aim for ~150 MB shards: large enough to stream well, small enough to parallelise
EXAMPLE_OVERHEAD_BYTES = 600  # per-example bytes besides the pixels: scalar features, keys, TFRecord framing
DECODE_BATCH = 32  # files per decode call: enough to keep every decode thread busy between Beam's elements

# A dated delivery folder: 2026-11-01, 20261101 or dt=2026-11-01.
_DELIVERY = re.compile(r"^(?:dt=)?\d{4}-?\d{2}-?\d{2}$")

# Where a patient id came from, recorded per input in the manifest (patient_id_from).
FROM_MANIFEST, FROM_PATTERN, FROM_DICOM, FROM_NONE = "manifest", "pattern", "dicom", "none"
MAX_WITHOUT_PATIENT_ID = 0.5  # share of inputs without a patient id above which ingest refuses to split
# Extensions of files that may be DICOM, whose PatientID is only known once the file is read.
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", "")
# `decode_file`'s rules when none are given: any decodable image of at least one pixel.
PERMISSIVE = admission.AdmissionRules(min_side=1, min_std=0)


@dataclass(frozen=True)
class SourceFile:
    """One input file and what the listing alone can tell about it.

    Args:
        path: where to read it (local path or URI).
        label: class name from the layout or manifest ("" when the layout gives none).
        split: the source's own split (Kaggle folder, manifest column), "" when it has none.
        patient_id: from the manifest or the patient pattern; "" = DICOM PatientID, else the file is its
            own group.
        rel_path: path relative to the source root: names the file's own group, stable if the root moves.
        patient_from: where `patient_id` came from: FROM_MANIFEST, FROM_PATTERN, or "" for none yet.
    """

    path: str
    label: str
    split: str = ""
    patient_id: str = ""
    rel_path: str = ""
    patient_from: str = ""


@dataclass(frozen=True)
class Listing:
    files: list[SourceFile]
    labels: tuple[str, ...]
    layout: str


@dataclass(frozen=True)
class IngestResult:
    examples_dir: str
    metadata: ex.DatasetMetadata
    states: dict[str, int] = field(default_factory=dict)  # state -> number of inputs
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> number of inputs

    @property
    def total(self) -> int:
        return sum(self.states.values())


def patient_id(rel_path: str, pattern: re.Pattern | None) -> str:
    """The patient a file belongs to, as `pattern`'s group in its path relative to the source; "" for none."""
    match = pattern.search(rel_path) if pattern else None
    return (match.group(1) or "") if match else ""


def split_fraction(patient: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per (patient, seed): adding files never moves a patient."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(patient: str, official: Iterable[str], config: IngestConfig) -> str:
    """The split of every image of one patient.

    The draw `split_fraction(patient, seed)` is uniform and independent of the class, so each class
    is split at the same rates (stratified in expectation; ingest measures and records the realised
    class shares), and a patient's split never depends on which other files exist.

    Args:
        patient: the patient id (or a file's own group id).
        official: the source's own splits of this patient's images ("" for none).
        config: fractions, seed and `official_splits` mode.

    Returns:
        "train", "val" or "test".
    """
    official = {s for s in official if s}
    u = split_fraction(patient, config.seed)
    if official and config.official_splits == "keep":
        return next(s for s in ("test", "val", "train") if s in official)  # the most held-out wins
    if official and config.official_splits == "merge_val":
        if "test" in official:  # a patient with any official test image is a test patient
            return "test"
        return "val" if u < config.val_fraction else "train"
    if u < config.test_fraction:
        return "test"
    return "val" if u < config.test_fraction + config.val_fraction * (1 - config.test_fraction) else "train"


def _list_local(source: str) -> list[str]:
    if not os.path.exists(source):
        raise FileNotFoundError(f"ingest source {source!r} does not exist")
    if not os.access(source, os.R_OK | os.X_OK):
        raise PermissionError(f"ingest source {source!r} is not readable (permission denied)")

    def fail(err: OSError):
        raise PermissionError(f"ingest source {source!r}: cannot list {err.filename!r}: {err.strerror}") from err

    paths = []
    for dirpath, dirnames, files in os.walk(source, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(os.path.join(dirpath, f) for f in files if not f.startswith("."))
    return paths


def _list_remote(source: str) -> list[str]:
    try:
        matched = FileSystems.match([source.rstrip("/") + "/**"])[0].metadata_list
    except Exception as err:  # noqa: BLE001 - each object store raises its own types
        raise FileNotFoundError(f"ingest source {source!r} cannot be listed: {err}") from err
    return [m.path for m in matched if not os.path.basename(m.path).startswith(".") and not m.path.endswith("/")]


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path, mime_type="application/octet-stream", compression_type="uncompressed") as f:
        return f.read()


def _list_manifest(source: str, pattern: re.Pattern | None) -> list[SourceFile]:
    """Reads a CSV manifest; relative paths are relative to the manifest's folder."""
    try:
        text = _read_bytes(source).decode("utf-8-sig")
    except Exception as err:  # noqa: BLE001 - local and object-store errors differ
        raise FileNotFoundError(f"ingest manifest {source!r} cannot be read: {err}") from err
    reader = csv.DictReader(io.StringIO(text))
    missing = {"path", "label"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"ingest manifest {source!r} lacks column(s) {sorted(missing)}; "
                         f"expected {','.join(MANIFEST_INPUT_COLUMNS)} (patient_id and split optional)")
    root = source.rsplit("/", 1)[0] if "/" in source else "."
    files = []
    for line, row in enumerate(reader, start=2):
        given_split = (row.get("split") or "").strip().lower()
        split = SPLIT_FOLDER_NAMES.get(given_split, given_split)
        if split not in ("", *ex.SPLITS):
            raise ValueError(f"ingest manifest {source!r} line {line}: split {given_split!r} is not one of "
                             f"{sorted(SPLIT_FOLDER_NAMES)}")
        rel = row["path"].strip()
        path = rel if fileio.is_remote(rel) or os.path.isabs(rel) else f"{root}/{rel}"
        label = row["label"].strip()
        if label.lower() in SPLIT_FOLDER_NAMES:
            raise ValueError(f"ingest manifest {source!r} line {line}: label {label!r} is a split name; "
                             "splits go in the split column")
        given, found = (row.get("patient_id") or "").strip(), patient_id(rel, pattern)
        files.append(SourceFile(path, label, split, given or found, rel,
                                FROM_MANIFEST if given else FROM_PATTERN if found else ""))
    return files


def select_deliveries(
    paths: list[str], rels: list[str], latest: int
) -> tuple[list[str], list[str], list[str]]:
    """Keeps the files of the latest `latest` dated delivery folders (all of them when 0).

    Retraining sources often grow by deliveries, `<prefix>/2026-11-01/<layout>/...`. When every
    top-level folder is a date (2026-11-01, 20261101, dt=2026-11-01), each is one delivery in the
    usual layout; otherwise the source is a single delivery and nothing is dropped.

    Args:
        paths: the files under the source.
        rels: their paths relative to the source.
        latest: how many of the newest deliveries to keep; 0 keeps every delivery.

    Returns:
        The kept paths, their relative paths, and their paths relative to their delivery folder
        (which the layout is read from).
    """
    tops = {r.split("/")[0] for r in rels if "/" in r}
    if not tops or not all(_DELIVERY.match(t) for t in tops) or any("/" not in r for r in rels):
        return paths, rels, rels
    keep = set(sorted(tops, key=lambda t: re.sub(r"\D", "", t))[-latest:] if latest else tops)
    log.info("ingest: %d dated deliveries, reading %s", len(tops), sorted(keep))
    kept = [(p, r) for p, r in zip(paths, rels, strict=True) if r.split("/")[0] in keep]
    return [p for p, _ in kept], [r for _, r in kept], [r.split("/", 1)[1] for _, r in kept]


def list_sources(source: str, config: IngestConfig) -> Listing:
    """Lists the inputs under `source`, with their labels, official splits and file-name patient ids.

    Args:
        source: a local folder, a gs:// (or other Beam filesystem) prefix, or a CSV manifest.
        config: the fixed label order, if any.

    Returns:
        The files sorted by path, the label names in label order, and the layout recognised.

    Raises:
        FileNotFoundError: `source` is missing, empty or cannot be listed.
        PermissionError: `source` (or a folder under it) is not readable.
        ValueError: a manifest lacks the path or label column or names an unknown split.
    """
    pattern = config.patient_id_regex
    if dicomweb.is_source(source):
        files, layout = dicomweb.list_files(source, config), dicomweb.LAYOUT
    elif source.lower().endswith(".csv"):
        files, layout = _list_manifest(source, pattern), MANIFEST
    else:
        paths = _list_remote(source) if fileio.is_remote(source) else _list_local(source)
        if not paths:
            raise FileNotFoundError(f"ingest source {source!r} holds no files (empty or unreadable)")
        prefix = source.rstrip("/") + "/"
        rels = [p[len(prefix):] if p.startswith(prefix) else os.path.basename(p) for p in paths]
        paths, rels, within = select_deliveries(paths, rels, config.latest_deliveries)
        layout = _layout(source, within)
        files = []
        for path, rel, inner in zip(paths, rels, within, strict=True):
            parts = inner.split("/")
            if layout == KAGGLE:  # train/<class>/file; a file directly under train/ has no class
                split = SPLIT_FOLDER_NAMES[parts[0].lower()] if len(parts) >= 2 else ""
                label = parts[1] if len(parts) >= 3 else ""
                if label.lower() in SPLIT_FOLDER_NAMES:
                    raise ValueError(f"ingest source {source!r}: {parts[0]}/{label}/ is a split folder inside a "
                                     "split folder; a class cannot be called like a split")
            else:  # <class>/file; a file at the root has no class
                split, label = "", (parts[0] if len(parts) >= 2 else "")
            found = patient_id(rel, pattern)
            files.append(SourceFile(path, label, split, found, rel, FROM_PATTERN if found else ""))
    if not files:
        raise FileNotFoundError(f"ingest source {source!r} lists no files")
    labels = tuple(config.labels) or tuple(sorted({f.label for f in files if f.label}))
    present = Counter(f.label for f in files if f.label in labels)
    if len(present) < 2:
        found = ", ".join(f"{name}: {n} files" for name, n in sorted(present.items())) or "no labelled files"
        raise ValueError(f"ingest source {source!r} holds {len(present)} class ({found}) of labels {list(labels)}: "
                         "a classifier needs files of at least two classes, in one folder per class "
                         "(<class>/..., or train|val|test/<class>/...) or a CSV manifest's label column")
    return Listing(sorted(files, key=lambda f: f.path), labels, layout)


def _layout(source: str, within: list[str]) -> str:
    """KAGGLE when every top folder is a split folder (train/Training/val/valid/test/Testing, any case),
    CLASS_PER_FOLDER when none is; a mix is refused, since a folder cannot be both a split and a class."""
    tops = {r.split("/")[0] for r in within if "/" in r}
    splits = sorted(t for t in tops if t.lower() in SPLIT_FOLDER_NAMES)
    if splits and len(splits) < len(tops):
        others = sorted(tops - set(splits))
        raise ValueError(f"ingest source {source!r}: top folders {splits} are split names but {others} are not; "
                         "use split folders (train|val|test/<class>/...) or class folders (<class>/...), not both, "
                         "or a CSV manifest")
    return KAGGLE if splits else CLASS_PER_FOLDER


def _may_be_dicom(path: str) -> bool:
    """Whether a file could hold a DICOM PatientID: a DICOM extension, or none and the DICM magic."""
    if dicomweb.is_source(path):  # a PACS instance
        return True
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _DICOM_SUFFIXES:
        return False
    if suffix:
        return True
    try:
        with FileSystems.open(path, mime_type="application/octet-stream", compression_type="uncompressed") as f:
            return dicom.is_dicom(f.read(132))
    except Exception:  # noqa: BLE001 - an unreadable file is quarantined later, with its reason
        return False


def check_patient_ids(listing: Listing, config: IngestConfig) -> int:
    """Refuses, before any work, a source where most inputs have no patient id, or warns of a few.

    Args:
        listing: the inputs, with the patient ids the manifest or the pattern gave them.
        config: `patient_id_pattern` and `allow_image_level_splits`.

    Returns:
        How many inputs have no patient id (DICOM files are counted once read, by `_finish`).

    Raises:
        ValueError: more than MAX_WITHOUT_PATIENT_ID of the inputs have none and image-level splits
            are not allowed; the message says the three ways to give patient ids.
    """
    without = [f for f in listing.files if not f.patient_id and not _may_be_dicom(f.path)]
    share = len(without) / len(listing.files)
    if share > MAX_WITHOUT_PATIENT_ID and not config.allow_image_level_splits:
        raise ValueError(_no_patient_ids_message(len(without), len(listing.files), config,
                                                 [f.rel_path or f.path for f in without[:3]]))
    if without:
        log.warning("ingest: %d of %d inputs have no patient id; each is its own patient, so one patient's images "
                    "among them can land in more than one split%s", len(without), len(listing.files),
                    " (allow_image_level_splits is on)" if share > MAX_WITHOUT_PATIENT_ID else "")
    return len(without)


def _no_patient_ids_message(n: int, total: int, config: IngestConfig, examples: list[str]) -> str:
    pattern = config.patient_id_pattern or "none"
    return (f"{n} of {total} inputs ({n / total:.0%}) have no patient id (patient_id_pattern: {pattern}; e.g. "
            f"{', '.join(examples)}), so a patient's images could land in more than one split. Give patient ids "
            "one of three ways: (1) --patient-id-pattern REGEX, one group searched in the path relative to the "
            "source, e.g. '(?:^|/)covid_(p\\d+)_', or a preset: " + ", ".join(PATIENT_ID_PRESETS) + "; (2) a CSV "
            "manifest with a patient_id column (path,label,patient_id[,split]); (3) DICOM files with PatientID. "
            "Or set ingest.allow_image_level_splits: true to split image by image, recorded as a limitation of "
            "the model")


@dataclass(frozen=True)
class _Decoded:
    """The outcome of reading one file: a serialized example, or the reason it was quarantined.

    `patient` (the raw patient or group id) lives only inside the pipeline, to group and split; it is
    never written. `split` is set once the patient's split is known.
    """

    source: SourceFile
    reason: str = ""
    pixel_hash: str = ""
    example: bytes = b""
    patient: str = ""
    patient_key: str = ""
    patient_from: str = ""
    sha256: str = ""
    example_sha256: str = ""
    split: str = ""


def pixel_checksum(pixels: np.ndarray, source_size: tuple[int, int]) -> str:
    """The identity used for exact-duplicate detection: the decoded pixels, their shape and the source's size.

    A JPEG is decoded at a reduced scale (`decode_scaled`), so two files with equal checksums give
    identical stored examples, which is what a duplicate is for training.
    """
    digest = hashlib.sha256(np.ascontiguousarray(pixels).data)  # hashed in place: no copy of the pixels
    digest.update(str((pixels.shape, source_size)).encode())
    return digest.hexdigest()


def patient_key(patient: str, key: str) -> str:
    """A keyed hash of the patient id: stable for grouping, meaningless without the key."""
    return hmac.new(key.encode(), patient.encode(), hashlib.sha256).hexdigest()[:32]


def resolve_patient_key_secret(config: IngestConfig) -> tuple[str, str]:
    """Finds the patient-key secret at run time: file, then environment variable, then config.

    Returns:
        (secret, where it came from: "file", "env", "config" or "ephemeral").

    Raises:
        FileNotFoundError: `patient_key_secret_file` is set but cannot be read.
        ValueError: the secret file is empty, or no secret is configured and one is required.
    """
    if config.patient_key_secret_file:
        try:
            secret = _read_bytes(config.patient_key_secret_file).decode().strip()
        except Exception as err:  # noqa: BLE001 - local and object-store errors differ
            raise FileNotFoundError(f"patient key secret file {config.patient_key_secret_file!r} "
                                    f"cannot be read: {err}") from err
        if not secret:
            raise ValueError(f"patient key secret file {config.patient_key_secret_file!r} is empty")
        return secret, "file"
    if config.patient_key_secret_env and os.environ.get(config.patient_key_secret_env):
        return os.environ[config.patient_key_secret_env], "env"
    if config.patient_key_secret:
        return config.patient_key_secret, "config"
    if config.require_patient_key_secret:
        raise ValueError("no patient key secret: set patient_key_secret_file or the environment variable "
                         f"{config.patient_key_secret_env!r} (require_patient_key_secret is on)")
    log.warning("no patient key secret configured (file, $%s or config): using a random key for this run; "
                "patient keys group images within this output only and cannot be joined across ingests",
                config.patient_key_secret_env)
    return secrets.token_hex(32), "ephemeral"


def key_id(secret: str) -> str:
    """A fingerprint of the secret that reveals nothing about it, so two outputs' keys can be compared."""
    return hmac.new(secret.encode(), b"radflow patient key id", hashlib.sha256).hexdigest()[:16]


def _source_format(data: bytes) -> str:
    """The format named by the file's magic bytes; "" for none that radflow decodes."""
    if dicom.is_dicom(data):
        return "DICOM"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"GIF8",):
        return "GIF"
    return ""


def _tf_error(err: tf.errors.OpError) -> str:
    """The readable part of a TensorFlow op error, without the op and device decoration."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", err.message.splitlines()[0])
    return text.strip()


def decode_file(
    source: SourceFile, labels: tuple[str, ...], size: int, channels: int, key: str = "", *,
    resize_policy: str = "pad", rules: admission.AdmissionRules = PERMISSIVE, read=_read_bytes,
) -> _Decoded:
    """Reads, decodes and standardises one file; never raises for a bad file.

    JPEG (CMYK too), PNG, BMP and GIF are decoded by the serving signature's `decode_scaled`: a
    JPEG at 1/2, 1/4 or 1/8 of its size when that still covers `size`, and a 16-bit PNG at its real
    sample depth (sBIT, else its value range), which is recorded as the image's bit depth. DICOM is
    first rendered to PNG by `radflow.dicom.to_png`, the conversion the predict client uses, then
    decoded the same way. The admission rules `radflow serve` applies are checked on the header's
    size before anything is decoded, and on the std_intensity measured (the curated schema's minimum).

    Args:
        source: the file.
        labels: the label names; other classes are quarantined.
        size: stored image side.
        channels: stored channels.
        key: the patient-key secret.
        resize_policy: "pad" or "crop".
        rules: images they refuse are quarantined (too small, too many pixels, constant).
        read: path -> bytes; `_DecodeFn` adds DICOMweb addresses (dicomweb.InstanceReader).

    Returns:
        The example, or the quarantine reason.

    Raises:
        PacsUnavailable: a PACS that stopped answering; the run fails rather than quarantine what remains.
    """
    def quarantine(reason: str, **kw) -> _Decoded:
        return _Decoded(source, reason=reason, **kw)

    if source.label not in labels:
        where = dicomweb.NO_LABEL if dicomweb.is_source(source.path) else "no class folder"
        return quarantine(f"{UNKNOWN_CLASS} {source.label!r}" if source.label else f"{UNKNOWN_CLASS}: {where}")
    try:
        data = read(source.path)
    except PacsUnavailable:
        raise
    except PacsHTTPError as err:
        return quarantine(f"{UNREADABLE}: HTTP {err.status} ({err})")
    except Exception as err:  # noqa: BLE001 - local and object-store errors differ
        return quarantine(f"{UNREADABLE}: {type(err).__name__}")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return quarantine(f"{TRUNCATED}: empty file", sha256=sha)
    fmt = _source_format(data)
    patient, patient_from, header, bit_depth = source.patient_id, source.patient_from, {}, 8
    if fmt == "DICOM":
        try:
            rendered = dicom.decode(data)
        except dicom.DicomError as err:
            return quarantine(str(err), sha256=sha)
        data = dicom.encode_png(rendered.pixels)
        if not patient and rendered.patient_id:
            patient, patient_from = rendered.patient_id, FROM_DICOM
        header = {k: v for k, v in rendered.header.items() if k in ex.HEADER_FEATURES}
        bit_depth = rendered.bits_stored
    elif not fmt:
        try:
            with Image.open(io.BytesIO(data)) as probe:
                return quarantine(f"{UNSUPPORTED_FORMAT}: {probe.format}", sha256=sha)
        except UnidentifiedImageError:
            return quarantine(NOT_AN_IMAGE, sha256=sha)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged headers
            return quarantine(f"{NOT_AN_IMAGE}: {err}", sha256=sha)
    declared = None  # a header PIL cannot read is left to the decoder, whose error names the damage
    try:
        declared = admission.read_header(data)
        if declared:
            rules.check_size(declared.width, declared.height)
    except admission.Refused as err:
        return quarantine(_refusal(err, declared, rules), sha256=sha)
    try:
        image = measure_encoded(data, size, channels, resize_policy)
    except tf.errors.InvalidArgumentError as err:
        return quarantine(f"{TRUNCATED}: {fmt} {_tf_error(err)}", sha256=sha)
    info = image.features
    try:
        if not declared:
            rules.check_size(info.orig_width, info.orig_height)
        rules.check_std(info.std)
    except admission.Refused as err:
        return quarantine(_refusal(err, admission.ImageHeader(fmt, info.orig_width, info.orig_height, ""), rules,
                                   info.std), sha256=sha)
    if not patient:
        patient, patient_from = f"file:{source.rel_path or source.path}", FROM_NONE
    pkey = patient_key(patient, key)
    # a DICOM's depth is its BitsStored (the PNG it was rendered to is 8-bit), and its header is allow-listed
    info = dataclasses.replace(info, source_format=fmt, patient_key=pkey, header=header,
                               bit_depth=bit_depth if fmt == "DICOM" else info.bit_depth)
    example = ex.make_example(image.stored, labels.index(source.label), source.label, info)
    return _Decoded(source, pixel_hash=pixel_checksum(image.pixels, (info.orig_height, info.orig_width)),
                    example=example, patient=patient, patient_key=pkey, patient_from=patient_from, sha256=sha,
                    example_sha256=hashlib.sha256(example).hexdigest())


@dataclass(frozen=True)
class MeasuredImage:
    """One encoded image as ingest stores it.

    Args:
        features: its per-image features (no patient key or DICOM header): the intensity statistics
            of the pixels as decoded, the size of the source.
        pixels: the decoded pixels, a JPEG at the scale `decode_scaled` chose.
        stored: the standardised pixels, the example's image.
    """

    features: ex.ImageFeatures
    pixels: np.ndarray
    stored: np.ndarray


def measure_encoded(data: bytes, size: int, channels: int, resize_policy: str = "pad") -> MeasuredImage:
    """Decodes, standardises and measures JPEG, PNG, BMP or GIF bytes as ingest does, in one graph call:
    the measure serving skew must take of a request to compare it with the training statistics.

    Args:
        data: the encoded image.
        size: the stored side (DatasetMetadata.image_size).
        channels: the stored channels.
        resize_policy: the examples' policy.

    Raises:
        tf.errors.InvalidArgumentError: the bytes do not decode.
    """
    pixels, stored, histogram, bits, height, width = _decoder(size, channels, resize_policy)(tf.constant(data))
    decoded = pixels.numpy()
    features = ex.ImageFeatures.measure(decoded, _source_format(data), bit_depth=int(bits), histogram=histogram.numpy())
    return MeasuredImage(dataclasses.replace(features, orig_height=int(height), orig_width=int(width)), decoded,
                         stored.numpy())


def _refusal(err: admission.Refused, image: admission.ImageHeader | None, rules: admission.AdmissionRules,
             std: float = 0.0) -> str:
    """Ingest's quarantine reason for an admission refusal, in ingest's words (reason: detail)."""
    if err.reason == admission.TOO_SMALL:
        return f"{TOO_SMALL}: {image.width}x{image.height} px, minimum side {rules.min_side}"
    if err.reason == admission.CONSTANT:
        return f"{CONSTANT}: intensity std {std:.2f} < {rules.min_std} on 0-255"
    if image is None:  # PIL itself refused the declared size as a decompression bomb
        return f"{TOO_MANY_PIXELS}: {err.message}"
    return f"{TOO_MANY_PIXELS}: {image.width}x{image.height} = {image.pixels} px, limit {rules.max_pixels}"


class _DecodeFn(beam.DoFn):
    """`decode_file` on each batch of inputs, `decode_threads` files at a time, with Beam counters
    and a progress line every `progress_every` files.

    The decode graph and the file reads and hashes release the GIL, so threads decode on every core
    of the worker while the runner's own Python overhead stays on one thread (see docs/ingest.md,
    "Speed"). Results come out in the batch's order.
    """

    def __init__(self, labels: tuple[str, ...], config: IngestConfig, key: str, options: PipelineOptions):
        self._labels, self._config, self._key = labels, config, key
        self._threads = decode_threads(config, options)
        runner, direct = options.view_as(StandardOptions).runner, options.view_as(DirectOptions)
        self._one_tf_thread = runner == "DirectRunner" and direct.direct_running_mode == "multi_processing"

    def setup(self):
        self._n, self._t0 = 0, time.monotonic()
        self._ok = beam.metrics.Metrics.counter("ingest", "decoded")
        self._bad = beam.metrics.Metrics.counter("ingest", "quarantined")
        c = self._config
        pacs = dicomweb.InstanceReader(c)
        self._read = lambda path: pacs(path) if dicomweb.is_source(path) else _read_bytes(path)
        # Worker threads share TensorFlow's pools, which TF sizes to the cores (pinning them to one
        # thread serialised the threads' decode graphs: 5% slower). Worker processes each get
        # their own pools, so there one TF thread per process avoids oversubscribing the cores.
        if self._one_tf_thread:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TF already initialised in this process: keep its settings
                pass
        _decoder(c.image_size, c.channels, c.resize_policy).get_concrete_function()  # trace before the threads
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, "decode") if self._threads > 1 else None

    def _decode(self, source: SourceFile) -> _Decoded:
        c = self._config
        return decode_file(source, self._labels, c.image_size, c.channels, self._key,
                           resize_policy=c.resize_policy, rules=c.admission, read=self._read)

    def process(self, batch: list[SourceFile]):
        """Yields a quarantined file's manifest row (tagged "quarantined"), or a decoded file's
        bookkeeping without its example (main) and (path, example) (tagged "examples"): only the
        bookkeeping goes through the shuffles that decide splits and duplicates."""
        for decoded in self._pool.map(self._decode, batch) if self._pool else map(self._decode, batch):
            self._n += 1
            if self._n % self._config.progress_every == 0:
                rate = self._n / (time.monotonic() - self._t0)
                log.info("ingest progress: worker %d has read %d files (%.1f files/s)", os.getpid(), self._n, rate)
            if decoded.reason:
                self._bad.inc()
                yield beam.pvalue.TaggedOutput("quarantined", _row(decoded, QUARANTINED, decoded.reason))
            else:
                self._ok.inc()
                yield beam.pvalue.TaggedOutput("examples", (decoded.source.path, decoded.example))
                yield dataclasses.replace(decoded, example=b"")

    def teardown(self):
        if self._pool:
            self._pool.shutdown()


def decode_threads(config: IngestConfig, options: PipelineOptions) -> int:
    """Threads each decode worker decodes with: `config.decode_threads`, or else the DirectRunner's
    cores shared among its workers (all of them for in_memory's single worker), and one on other
    runners, which run a worker process per core.

    Args:
        config: the ingest options.
        options: the pipeline's options, `beam_args` included.

    Returns:
        At least 1.
    """
    if config.decode_threads:
        return config.decode_threads
    if options.view_as(StandardOptions).runner != "DirectRunner":
        return 1
    workers = max(1, options.view_as(DirectOptions).direct_num_workers or 1)  # a `beam_args` 0 is one worker too
    return max(1, (os.cpu_count() or 1) // workers)


def _resolve_duplicates(item: tuple[str, Iterable[_Decoded]], patient_splits: dict[str, str]):
    """Keeps the first file (by path) of a set of identical images; the others become duplicates.

    Yields the manifest line of every file, and (path, split) of the kept one tagged "kept".
    """
    _, group = item
    group = sorted((dataclasses.replace(d, split=patient_splits[d.patient]) for d in group),
                   key=lambda d: d.source.path)
    keep = group[0]
    yield beam.pvalue.TaggedOutput("kept", (keep.source.path, keep.split))
    yield _row(keep, INGESTED, "")
    for dup in group[1:]:
        where = "" if dup.split == keep.split else f" (cross-split: kept in {keep.split}, would be in {dup.split})"
        yield _row(dup, DUPLICATE, f"identical pixels to {keep.source.path}{where}")


def _kept_example(item: tuple[str, bytes], kept: dict[str, str]):
    """A kept file's example, tagged with its split; nothing for a duplicate."""
    path, example = item
    if path in kept:
        yield beam.pvalue.TaggedOutput(kept[path], example)


def _row(d: _Decoded, state: str, reason: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(
        [d.source.path, d.source.label, d.split, state, reason, d.patient_key,
         d.patient_from or d.source.patient_from, d.sha256, d.example_sha256 if state == INGESTED else ""])
    return buf.getvalue()


def _num_shards(n_examples: int, config: IngestConfig) -> int:
    example_bytes = config.image_size**2 * config.channels + EXAMPLE_OVERHEAD_BYTES
    return max(1, math.ceil(n_examples * example_bytes / TARGET_SHARD_BYTES))


def _expected_split_sizes(files: list[SourceFile], config: IngestConfig) -> dict[str, int]:
    """Rough per-split sizes before decoding, to choose shard counts (~TARGET_SHARD_BYTES each)."""
    n = len(files)
    official_test = sum(f.split == "test" for f in files)
    test = official_test if official_test and config.official_splits != "resplit" else round(n * config.test_fraction)
    val = round((n - test) * config.val_fraction)
    return {"train": n - test - val, "val": val, "test": test}


@functools.lru_cache(maxsize=8)
def _decoder(size: int, channels: int, resize_policy: str):
    """Encoded bytes -> (decoded pixels, standardised pixels, intensity histogram, bits per sample,
    source height, source width), traced once into one graph: the serving signature's decode and
    `standardize` plus the histogram the statistics come from. One call per image, run without the
    GIL, so ingest's decode threads share the cores instead of taking turns in Python."""
    def run(data: tf.Tensor):
        pixels, bits, height, width = decode_scaled(data, channels, size, resize_policy)
        stored = standardize_source(pixels, size, resize_policy, (height, width))
        return pixels, stored, ex.intensity_histogram(pixels), bits, height, width

    return tf.function(run, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def pipeline_options(config: IngestConfig) -> PipelineOptions:
    """Beam options: the configured runner and DirectRunner mode, then `beam_args`, which win.

    `direct_num_workers` 0 is one DirectRunner worker per core, but one in in_memory mode, where
    the decode threads use the cores (`decode_threads`).
    """
    mode = PipelineOptions([f"--direct_running_mode={config.direct_running_mode}", *config.beam_args]).view_as(
        DirectOptions).direct_running_mode
    workers = config.direct_num_workers or (1 if mode == "in_memory" else os.cpu_count() or 1)
    return PipelineOptions([
        f"--runner={config.runner}",
        f"--direct_running_mode={config.direct_running_mode}",
        f"--direct_num_workers={workers}",
        *config.beam_args,
    ])


def ingest(source: str, out_dir: str, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Decodes, standardises, deduplicates and patient-splits the inputs of `source` into `out_dir`.

    Args:
        source: a folder (local or gs://) in Kaggle or class-per-folder layout, or a CSV manifest.
        out_dir: where the split shards, manifest.csv and metadata.json go; must not already
            hold a finished ingest.
        config: image size, splits, privacy and the Beam runner.

    Returns:
        The metadata written and the accounting of every input.

    Raises:
        FileNotFoundError: `source` is missing or empty.
        PermissionError: `source` is not readable.
        FileExistsError: `out_dir` already holds a finished ingest.
        RuntimeError: more inputs than `config.max_quarantined_fraction` were quarantined.
    """
    if tf.io.gfile.exists(os.path.join(out_dir, ex.METADATA_FILE)):
        raise FileExistsError(f"{out_dir} already holds a finished ingest; choose a new output directory")
    listing = list_sources(source, config)
    check_patient_ids(listing, config)
    secret, secret_source = resolve_patient_key_secret(config)
    expected = _expected_split_sizes(listing.files, config)
    log.info("ingest: %d files (%s layout), labels %s, runner %s", len(listing.files), listing.layout,
             listing.labels, config.runner)

    options = pipeline_options(config)
    p = beam.Pipeline(options=options)
    decoded = (
        p
        | "ListFiles" >> beam.Create(listing.files)
        | "Reshuffle" >> beam.Reshuffle()  # spread the decode work over all workers
        | "Batch" >> beam.BatchElements(min_batch_size=DECODE_BATCH, max_batch_size=DECODE_BATCH)
        | "Decode" >> beam.ParDo(_DecodeFn(listing.labels, config, secret, options)).with_outputs(
            "quarantined", "examples", main="light")
    )
    # Splits and duplicates are decided on the bookkeeping alone; the pixels never go through a shuffle.
    patient_splits = (
        decoded.light
        | "KeyByPatient" >> beam.Map(lambda d: (d.patient, d.source.split))
        | "GroupByPatient" >> beam.GroupByKey()
        | "SplitByPatient" >> beam.Map(lambda kv, c: (kv[0], assign_split(kv[0], set(kv[1]), c)), config)
    )
    resolved = (
        decoded.light
        | "KeyByPixels" >> beam.Map(lambda d: (d.pixel_hash, d))
        | "GroupIdentical" >> beam.GroupByKey()
        | "Deduplicate" >> beam.FlatMap(_resolve_duplicates, beam.pvalue.AsDict(patient_splits)).with_outputs(
            "kept", main="rows")
    )
    stored = decoded.examples | "KeptExamples" >> beam.FlatMap(
        _kept_example, beam.pvalue.AsDict(resolved.kept)).with_outputs(*ex.SPLITS)
    for split in ex.SPLITS:
        stored[split] | f"Write{split}" >> beam.io.WriteToTFRecord(
            os.path.join(out_dir, split, split),
            file_name_suffix=ex.SHARD_SUFFIX,
            num_shards=_num_shards(expected[split], config),
        )
    (
        (resolved.rows, decoded.quarantined)
        | "AllRows" >> beam.Flatten()
        | "WriteManifest" >> beam.io.WriteToText(
            os.path.join(out_dir, ex.MANIFEST_FILE),
            header=",".join(MANIFEST_COLUMNS),
            num_shards=1,
            shard_name_template="",
        )
    )
    started = time.monotonic()
    run = beam_runner.run(p)
    _log_counters(run, time.monotonic() - started)
    return _finish(out_dir, source, listing, config, key_id(secret), secret_source)


def _log_counters(run: beam.runners.runner.PipelineResult, seconds: float) -> None:
    """Logs the decode counters: a runner-independent summary (Dataflow shows them live too)."""
    try:
        counters = {r.key.metric.name: r.committed for r in run.metrics().query()["counters"]
                    if r.key.metric.namespace == "ingest"}
    except (NotImplementedError, KeyError):  # some runners do not report metrics
        counters = {}
    n = sum(v or 0 for v in counters.values())
    log.info("ingest: pipeline finished in %.1f s: %s (%.1f files/s)", seconds, counters, n / max(seconds, 1e-9))


def read_manifest(examples_dir: str) -> list[dict[str, str]]:
    """The manifest rows, one per input file, sorted by path."""
    with tf.io.gfile.GFile(os.path.join(examples_dir, ex.MANIFEST_FILE)) as f:
        return sorted(csv.DictReader(f), key=lambda r: r["path"])


def _named(paths: list[str], limit: int = 10) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _synthetic_marker(source: str) -> dict | None:
    """The marker `radflow synth` leaves at the root of a folder it wrote, or None."""
    if source.lower().endswith(".csv") or dicomweb.is_source(source):
        return None
    path = source.rstrip("/") + "/" + ex.SYNTHETIC_MARKER
    if not FileSystems.exists(path):
        return None
    return json.loads(_read_bytes(path).decode())


def check_accounting(files: list[SourceFile], rows: list[dict[str, str]]) -> None:
    """Every listed input has exactly one manifest row, and every row is a listed input.

    Raises:
        RuntimeError: naming the inputs without a row, with several rows, or rows of no listed input.
    """
    listed = Counter(f.path for f in files)
    written = Counter(r["path"] for r in rows)
    missing = sorted(set(listed) - set(written))
    repeated = sorted(p for p, n in written.items() if n > 1)
    unknown = sorted(set(written) - set(listed))
    if missing or repeated or unknown:
        problems = [f"{len(missing)} inputs have no manifest row ({_named(missing)})" if missing else "",
                    f"{len(repeated)} inputs have several rows ({_named(repeated)})" if repeated else "",
                    f"{len(unknown)} rows name no listed input ({_named(unknown)})" if unknown else ""]
        raise RuntimeError(f"ingest accounted for {len(rows)} rows of {len(files)} input files: "
                           + "; ".join(p for p in problems if p) + "; no metadata.json was written")


def verify_shards(out_dir: str, rows: list[dict[str, str]]) -> int:
    """Reads every shard back and matches its records with the manifest's ingested rows, one for one.

    The key is the sha256 of each serialized record, so a record that reached disk damaged counts
    as missing (and its damaged copy as extra). A failure writes READBACK_FILE, one line per
    affected input.

    Args:
        out_dir: the ingest output, shards and manifest written.
        rows: its manifest rows.

    Returns:
        The number of records verified.

    Raises:
        RuntimeError: a split's shards lack records of ingested inputs (named) or hold records that
            no ingested row of that split claims.
    """
    by_hash = {r["example_sha256"]: r for r in rows if r["state"] == INGESTED}
    problems, report, total = [], [], 0
    for split in ex.SPLITS:
        expected = Counter(r["example_sha256"] for r in rows if r["state"] == INGESTED and r["split"] == split)
        files = ex.split_files(out_dir, split)
        found = Counter(hashlib.sha256(record).hexdigest()  # batches: a third less CPU than record by record
                        for batch in tf.data.TFRecordDataset(files).batch(256).as_numpy_iterator()
                        for record in batch) if files else Counter()
        total += sum(found.values())
        missing, extra = expected - found, found - expected
        if missing:
            paths = sorted(by_hash[h]["path"] for h in missing.elements())
            problems.append(f"{split}: {sum(missing.values())} of {sum(expected.values())} records of ingested "
                            f"inputs are missing ({_named(paths)})")
            report += [(split, "missing", path) for path in paths]
        if extra:
            claimed = sorted(f"{by_hash[h]['path']} (manifest: {by_hash[h]['split']})"
                             for h in extra.elements() if h in by_hash)
            problems.append(f"{split}: {sum(extra.values())} records match no ingested row of {split}"
                            + (f" ({_named(claimed)})" if claimed else ""))
            report += [(split, "extra", c) for c in claimed]
            report += [(split, "extra", "unclaimed record")] * (sum(extra.values()) - len(claimed))
    if problems:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("split", "problem", "input"))
        writer.writerows(report)
        fileio.write_text_atomic(os.path.join(out_dir, READBACK_FILE), buf.getvalue())
        raise RuntimeError("ingest read its shards back and they do not match the manifest: " + "; ".join(problems)
                           + f". Every affected input is in {os.path.join(out_dir, READBACK_FILE)}; "
                           "no metadata.json was written")
    return total


def input_fingerprint(rows: list[dict[str, str]], source: str) -> str:
    """sha256 over every input's path relative to the source and its content hash."""
    prefix = source.rstrip("/") + "/"
    lines = sorted(f"{r['path'].removeprefix(prefix)}\t{r['sha256']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def class_share_gaps(counts: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per split, the largest difference between a class's share in the split and in the whole set."""
    labels = {name for c in counts.values() for name in c}
    total = {name: sum(c.get(name, 0) for c in counts.values()) for name in labels}
    n = sum(total.values())
    gaps = {}
    for split, c in counts.items():
        m = sum(c.values())
        if m and n:
            gaps[split] = max(abs(c.get(name, 0) / m - total[name] / n) for name in labels)
    return gaps


def _finish(out_dir: str, source: str, listing: Listing, config: IngestConfig, patient_key_id: str,
            secret_source: str) -> IngestResult:
    """Checks the accounting, then publishes metadata.json: the mark of a complete ingest."""
    rows = read_manifest(out_dir)
    check_accounting(listing.files, rows)
    verified = verify_shards(out_dir, rows)
    states = Counter(r["state"] for r in rows)
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["state"] == QUARANTINED)
    quarantined = states[QUARANTINED] / len(rows)
    for r in rows:
        if r["state"] == QUARANTINED:
            log.warning("quarantined %s: %s", r["path"], r["reason"])
        elif r["state"] == DUPLICATE and "cross-split" in r["reason"]:
            log.warning("duplicate across splits %s: %s", r["path"], r["reason"])
    if quarantined > config.max_quarantined_fraction:
        raise RuntimeError(
            f"{states[QUARANTINED]} of {len(rows)} inputs ({quarantined:.1%}) were quarantined, above "
            f"max_quarantined_fraction={config.max_quarantined_fraction:.0%}; reasons: {dict(reasons)}. "
            f"See {os.path.join(out_dir, ex.MANIFEST_FILE)}"
        )
    counts = {s: {name: 0 for name in listing.labels} for s in ex.SPLITS}
    for r in rows:
        if r["state"] == INGESTED:
            counts[r["split"]][r["label"]] += 1
    synthetic = _synthetic_marker(source)
    ingested = [r for r in rows if r["state"] == INGESTED]
    patient_ids = dict(Counter(r["patient_id_from"] for r in ingested))
    without = patient_ids.get(FROM_NONE, 0)
    image_level = without > MAX_WITHOUT_PATIENT_ID * len(ingested)
    if image_level and not config.allow_image_level_splits:  # DICOM files without PatientID, found once read
        examples = [r["path"] for r in ingested if r["patient_id_from"] == FROM_NONE][:3]
        raise RuntimeError(_no_patient_ids_message(without, len(ingested), config, examples)
                           + "; no metadata.json was written")
    for split, per_class in counts.items():
        absent = [name for name, n in per_class.items() if n == 0]
        if sum(per_class.values()) and absent:
            log.warning("ingest: split %s has no %s examples (classes present: %s)", split, ", ".join(absent),
                        {k: v for k, v in per_class.items() if v})
    for split, gap in class_share_gaps(counts).items():
        if gap > config.max_class_share_gap:
            log.warning("split %s: a class share differs from the whole set's by %.1f points (> %.1f): "
                        "few patients, or an official split with its own class mix", split, 100 * gap,
                        100 * config.max_class_share_gap)
    metadata = ex.DatasetMetadata(
        listing.labels, config.image_size, config.channels, counts,
        resize_policy=config.resize_policy,
        input_fingerprint=input_fingerprint(rows, source),
        layout=listing.layout,
        states=dict(states),
        quarantine_reasons=dict(reasons),
        patient_key_id=patient_key_id,
        verified_records=verified,
        patient_ids=patient_ids,
        image_level_splits=image_level,
        synthetic=synthetic is not None,
        modality=config.modality or (synthetic or {}).get("modality", ""),
    )
    ex.write_metadata(out_dir, metadata)
    log.info("ingest: %s; examples per split %s, all %d read back and matched with the manifest; patient key "
             "from %s (id %s)", dict(states), {s: metadata.split_size(s) for s in ex.SPLITS}, verified, secret_source,
             patient_key_id)
    return IngestResult(out_dir, metadata, dict(states), dict(reasons))
