"""The schema validate checks every split against: inferred on a first run, then frozen and curated.

A first run infers a schema from train and adds what inference cannot know: the label domain
(from metadata.json, not just the labels train happens to hold), the decodable source formats,
free values for the DICOM header fields, and value ranges that follow from how the features are
measured (intensities on 0-255, shares in 0-1, a non-constant image). `radflow schema freeze RUN`
copies that schema into pipeline/schema/<name>.pbtxt, where people tighten it by hand and review
changes like code; later runs validate against it (ValidateConfig.schema_name). The folder ships
in the image.

    radflow schema freeze runs/radflow-20260101-120000 --name chest_xray
"""

from __future__ import annotations

import datetime
import logging
import os

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from radflow import examples as ex
from radflow import fileio
from radflow.components.validate.config import CURATED_DIR, RESULT_FILE

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.pbtxt"  # the schema a validate output was checked against
SOURCE_FORMATS = ("BMP", "DICOM", "GIF", "JPEG", "PNG")  # what ingest decodes
# An image whose intensities barely vary (all black, all white, a flat test card) shows no anatomy.
MIN_STD_INTENSITY = 1.0

# Ranges that hold for any correctly measured image; a value outside one is a broken pipeline or a blank image.
_FLOAT_RANGES = {
    ex.MEAN_INTENSITY: (0.0, 255.0),
    ex.STD_INTENSITY: (MIN_STD_INTENSITY, 255.0),
    ex.P05_INTENSITY: (0.0, 255.0),
    ex.P50_INTENSITY: (0.0, 255.0),
    ex.P95_INTENSITY: (0.0, 255.0),
    ex.NEAR_BLACK_FRACTION: (0.0, 1.0),
    ex.NEAR_WHITE_FRACTION: (0.0, 1.0),
    ex.ASPECT_RATIO: (0.1, 10.0),  # wider than 10:1 is a strip, not a radiograph
}
_INT_RANGES = {
    ex.ORIG_HEIGHT: (1, None),
    ex.ORIG_WIDTH: (1, None),
    ex.BIT_DEPTH: (1, 16),
}


def curated_path(name: str) -> str:
    """Where the curated schema called `name` lives (whether or not it exists yet)."""
    return os.path.join(CURATED_DIR, f"{name}.pbtxt")


def infer(train: statistics_pb2.DatasetFeatureStatisticsList, metadata: ex.DatasetMetadata) -> schema_pb2.Schema:
    """Infers a schema from train statistics and adds the domains and ranges inference cannot see.

    Args:
        train: the training split's statistics.
        metadata: the examples' metadata, which declares every label.

    Returns:
        A schema with presence constraints (from inference), the label domain, the source formats and value ranges.
    """
    schema = tfdv.infer_schema(train)
    _set_string_domain(schema, ex.LABEL_NAME, metadata.label_names)
    _set_string_domain(schema, ex.SOURCE_FORMAT, SOURCE_FORMATS)
    tfdv.get_feature(schema, ex.LABEL).int_domain.CopyFrom(
        schema_pb2.IntDomain(name=ex.LABEL, min=0, max=metadata.num_classes - 1)
    )
    for name, (low, high) in _FLOAT_RANGES.items():
        tfdv.get_feature(schema, name).float_domain.CopyFrom(schema_pb2.FloatDomain(min=low, max=high))
    for name, (low, high) in _INT_RANGES.items():
        domain = schema_pb2.IntDomain(min=low) if high is None else schema_pb2.IntDomain(min=low, max=high)
        tfdv.get_feature(schema, name).int_domain.CopyFrom(domain)
    for name in ex.HEADER_FEATURES.values():  # free text from DICOM headers: present, any value; drift watches them
        feature = tfdv.get_feature(schema, name)
        if feature.WhichOneof("domain_info"):
            feature.ClearField(feature.WhichOneof("domain_info"))
    _drop_unreferenced_domains(schema)
    return schema


def _drop_unreferenced_domains(schema: schema_pb2.Schema) -> None:
    """Removes the schema-level string domains inference made that no feature refers to any more."""
    referenced = {f.domain for f in schema.feature if f.WhichOneof("domain_info") == "domain"}
    kept = [d for d in schema.string_domain if d.name in referenced]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)


def _set_string_domain(schema: schema_pb2.Schema, feature: str, values: tuple[str, ...]) -> None:
    """Gives `feature` exactly `values` as its domain (its inferred schema-level domain is dropped later)."""
    # Setting a member of the domain_info oneof replaces whatever domain inference chose.
    tfdv.get_feature(schema, feature).string_domain.CopyFrom(schema_pb2.StringDomain(name=feature, value=values))


def find_schema(run: str) -> str:
    """The schema.pbtxt of a finished validate output inside `run`.

    Args:
        run: a validate output directory, or any directory above one (a pipeline run, e.g. runs/radflow-<time>).

    Returns:
        The path of its schema.pbtxt.

    Raises:
        FileNotFoundError: no finished validate output under `run`.
        ValueError: several, so which one is meant is ambiguous.
    """
    if not tf.io.gfile.isdir(run):
        raise FileNotFoundError(f"{run} is not a directory")
    found = sorted(
        os.path.join(dirpath, SCHEMA_FILE)
        for dirpath, _, files in tf.io.gfile.walk(run)
        if SCHEMA_FILE in files and RESULT_FILE in files
    )
    if not found:
        raise FileNotFoundError(f"no finished validate output (a {SCHEMA_FILE} beside {RESULT_FILE}) under {run}")
    if len(found) > 1:
        raise ValueError(f"{len(found)} validate outputs under {run}; name one of: {found}")
    return found[0]


def freeze(run: str, name: str, dest_dir: str = CURATED_DIR) -> str:
    """Copies a run's schema into the curated schemas, where later runs pick it up by name.

    Args:
        run: a validate output, or a pipeline run directory holding exactly one.
        name: the curated schema's name, e.g. "chest_xray" (ValidateConfig.schema_name).
        dest_dir: the curated schema folder (the repository's pipeline/schema by default).

    Returns:
        The path written.

    Raises:
        FileNotFoundError, ValueError: see `find_schema`; also a name that is not a plain file name.
    """
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise ValueError(f"schema name {name!r} must be a plain file name without a directory, e.g. 'chest_xray'")
    source = find_schema(run)
    schema = tfdv.load_schema_text(source)  # parsing it refuses a damaged file before it becomes the reference
    dest = os.path.join(dest_dir, f"{name}.pbtxt")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# Curated radflow schema {name!r} (validate.schema_name): every split of every run using it is\n"
        f"# validated against this file. Tighten ranges and domains by hand and review changes like code;\n"
        f"# `radflow schema freeze` overwrites it.\n"
        f"# Frozen on {stamp} from {source}\n"
    )
    fileio.write_text_atomic(dest, header + str(schema))
    log.info("schema: froze %s as %s", source, dest)
    return dest
