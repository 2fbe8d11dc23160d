"""validate: profile every split with TFDV and check it against a schema before anything trains on it.

Statistics are computed over the scalar per-image features only (label, original size, intensity,
source format), never the pixel bytes. The schema is either a curated one (`schema_path`) or
inferred from train with the label domain pinned to `metadata.json`, so a label that ingest never
declared fails here rather than as a silent extra class in training. An empty split is an anomaly
too: train, model selection and the evaluation gate each need theirs.

`validation.json` is written last, so its presence means validate finished; the run then fails
(by default) if anything was found, after writing the report that explains why.

    radflow validate runs/examples runs/validation
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import tensorflow as tf
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from radflow import examples as ex
from radflow import fileio
from radflow.components.validate.config import ValidateConfig

log = logging.getLogger(__name__)

# The patient key is an identifier: its values differ between splits by design, so a domain
# inferred from train would flag every test patient. Patients are counted, not profiled.
PROFILED_FEATURES = tuple(f for f in ex.SCALAR_FEATURES if f != ex.PATIENT_KEY)
STATISTICS_DIR = "statistics"  # <split>.pb: binary DatasetFeatureStatisticsList per split
SCHEMA_FILE = "schema.pbtxt"  # the schema every split was validated against
REPORT_FILE = "anomalies.md"  # human-readable report
RESULT_FILE = "validation.json"  # machine-readable result; written last

# Why each split must not be empty, for the anomaly line.
_SPLIT_NEEDS = {
    "train": "training needs examples to fit the model",
    "val": "training needs a validation split for early stopping and model selection",
    "test": "evaluation needs a test split to gate the model before it is pushed",
}


@dataclass(frozen=True)
class ValidationResult:
    out_dir: str
    passed: bool
    anomalies: list[str]  # one readable line per anomaly: split, feature, what was expected, what was found
    num_examples: dict[str, int]  # split -> examples, from the statistics


class DataValidationError(RuntimeError):
    """The data broke the schema or a split is unusable; the message lists why and names the report."""


@contextlib.contextmanager
def _quiet_beam() -> Iterator[None]:
    """Raises Beam's loggers to WARNING for the duration; the per-pipeline INFO lines drown ours."""
    beam_log = logging.getLogger("apache_beam")
    previous = beam_log.level
    beam_log.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        beam_log.setLevel(previous)


def _statistics(
    examples_dir: str, split: str, scratch_dir: str, config: ValidateConfig
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Runs TFDV over one split's shards, profiling only the scalar features.

    TFDV writes its result through Beam; the scratch file lives under `out_dir` rather than a local
    temp dir so that remote runners (which cannot see this machine's /tmp) can write it too.
    """
    options = tfdv.StatsOptions(feature_allowlist=list(PROFILED_FEATURES))
    scratch = os.path.join(scratch_dir, f"{split}.tfrecord")
    with _quiet_beam():
        stats = tfdv.generate_statistics_from_tfrecord(
            data_location=ex.shard_pattern(examples_dir, split),
            output_path=scratch,
            stats_options=options,
            pipeline_options=PipelineOptions([f"--runner={config.runner}", *config.beam_args]),
        )
    tf.io.gfile.remove(scratch)
    return stats


def _num_examples(stats: statistics_pb2.DatasetFeatureStatisticsList) -> int:
    return int(stats.datasets[0].num_examples) if stats.datasets else 0


def _pin_label_domain(schema: schema_pb2.Schema, metadata: ex.DatasetMetadata) -> None:
    """Replaces the label domains inferred from train by the ones metadata.json declares.

    Inference only knows the values train happens to contain; the metadata says which exist.
    """
    # Setting a member of the domain_info oneof replaces whatever domain inference chose.
    names = schema_pb2.StringDomain(name=ex.LABEL_NAME, value=metadata.label_names)
    tfdv.get_feature(schema, ex.LABEL_NAME).string_domain.CopyFrom(names)
    labels = schema_pb2.IntDomain(name=ex.LABEL, min=0, max=metadata.num_classes - 1)
    tfdv.get_feature(schema, ex.LABEL).int_domain.CopyFrom(labels)
    # infer_schema put label_name's values in a schema-level domain; drop it now that nothing refers to it.
    referenced = {f.domain for f in schema.feature if f.WhichOneof("domain_info") == "domain"}
    kept = [d for d in schema.string_domain if d.name != ex.LABEL_NAME or d.name in referenced]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)


def _expected(schema: schema_pb2.Schema, path: str) -> str:
    """What the schema allows for a feature, in words."""
    feature = next((f for f in schema.feature if f.name == path), None)
    if feature is None:
        return "no such feature in the schema"
    kind = feature.WhichOneof("domain_info")
    if kind == "string_domain":
        return f"one of {list(feature.string_domain.value)}"
    if kind == "domain":
        domain = next((d for d in schema.string_domain if d.name == feature.domain), None)
        return f"one of {list(domain.value)}" if domain else f"a value of domain {feature.domain!r}"
    if kind == "int_domain":
        d = feature.int_domain
        low = d.min if d.HasField("min") else "-inf"
        high = d.max if d.HasField("max") else "inf"
        return f"an integer in [{low}, {high}]"
    if kind == "float_domain":
        d = feature.float_domain
        low = d.min if d.HasField("min") else "-inf"
        high = d.max if d.HasField("max") else "inf"
        return f"a float in [{low}, {high}]"
    expected = f"a {schema_pb2.FeatureType.Name(feature.type)} feature"
    if feature.HasField("presence"):
        expected += f" in at least {feature.presence.min_fraction:.0%} of examples"
    return expected


def _describe(split: str, anomalies: anomalies_pb2.Anomalies, schema: schema_pb2.Schema) -> list[str]:
    """One line per anomaly reason: split, feature, what the schema expects, what was found."""
    lines = []
    for key, info in sorted(anomalies.anomaly_info.items()):
        path = ".".join(info.path.step) or key
        reasons = [(r.short_description, r.description) for r in info.reason] or [
            (info.short_description, info.description)
        ]
        for short, long in reasons:
            lines.append(
                f"split {split!r}, feature {path!r}: {short} — expected {_expected(schema, path)}; "
                f"found: {long.strip()}"
            )
    if anomalies.HasField("dataset_anomaly_info"):
        for r in anomalies.dataset_anomaly_info.reason:
            lines.append(f"split {split!r}, dataset: {r.short_description} — {r.description.strip()}")
    return lines


def _report(result: ValidationResult, schema_source: str) -> str:
    """The Markdown report: examples per split, then the anomalies (or that there are none)."""
    rows = "\n".join(f"| {split} | {n} |" for split, n in result.num_examples.items())
    body = "\n".join(f"- {line}" for line in result.anomalies) if result.anomalies else "No anomalies."
    status = "passed" if result.passed else f"FAILED ({len(result.anomalies)} anomalies)"
    return (
        f"# Data validation: {status}\n\n"
        f"Schema: {schema_source}\n\n"
        f"| split | examples |\n|---|---|\n{rows}\n\n"
        f"## Anomalies\n\n{body}\n"
    )


def validate(examples_dir: str, out_dir: str, config: ValidateConfig = ValidateConfig()) -> ValidationResult:
    """Computes statistics per split, checks them against a schema and writes the verdict.

    Args:
        examples_dir: a finished ingest output (shards per split and metadata.json).
        out_dir: where statistics/<split>.pb, schema.pbtxt, anomalies.md and validation.json go.
        config: the schema to use, whether anomalies fail the run, and the Beam runner.

    Returns:
        The verdict; `passed` is False only when `config.fail_on_anomalies` is off.

    Raises:
        FileNotFoundError: `examples_dir` has no metadata.json, or `config.schema_path` is missing.
        DataValidationError: anomalies were found and `config.fail_on_anomalies` is set; the
            outputs are written first.
    """
    metadata = ex.read_metadata(examples_dir)
    if config.schema_path and not tf.io.gfile.exists(config.schema_path):
        raise FileNotFoundError(f"schema_path {config.schema_path!r} does not exist")
    tf.io.gfile.makedirs(out_dir)
    stale = os.path.join(out_dir, RESULT_FILE)
    if tf.io.gfile.exists(stale):  # a rerun must not look finished, or passed, before it is
        tf.io.gfile.remove(stale)
    scratch_dir = os.path.join(out_dir, STATISTICS_DIR, ".tfdv-scratch")

    anomalies: list[str] = []
    stats: dict[str, statistics_pb2.DatasetFeatureStatisticsList] = {}
    num_examples: dict[str, int] = {}
    for split in ex.SPLITS:
        expected = metadata.split_size(split)
        if not ex.split_files(examples_dir, split) or expected == 0:
            why = "it has no shards" if expected else "metadata.json counts 0 examples"
            anomalies.append(f"split {split!r} is empty ({why}): {_SPLIT_NEEDS[split]}")
            num_examples[split] = 0
            continue
        stats[split] = _statistics(examples_dir, split, scratch_dir, config)
        num_examples[split] = found = _num_examples(stats[split])
        log.info("validate: split %s has %d examples", split, found)
        if found != expected:
            anomalies.append(
                f"split {split!r}: the shards hold {found} examples but metadata.json counts {expected}"
            )
        fileio.write_bytes_atomic(
            os.path.join(out_dir, STATISTICS_DIR, f"{split}.pb"), stats[split].SerializeToString()
        )
    if tf.io.gfile.exists(scratch_dir):
        tf.io.gfile.rmtree(scratch_dir)

    schema: schema_pb2.Schema | None
    if config.schema_path:
        schema, schema_source = tfdv.load_schema_text(config.schema_path), config.schema_path
    elif "train" in stats and num_examples["train"]:
        schema = tfdv.infer_schema(stats["train"])
        _pin_label_domain(schema, metadata)
        schema_source = "inferred from train, label domain from metadata.json"
    else:
        schema, schema_source = None, "none (no curated schema and an empty train split to infer one from)"
    if schema is not None:
        tfdv.write_schema_text(schema, os.path.join(out_dir, SCHEMA_FILE))
        for split, split_stats in stats.items():
            if num_examples[split]:
                anomalies.extend(_describe(split, tfdv.validate_statistics(split_stats, schema), schema))

    result = ValidationResult(out_dir, not anomalies, anomalies, num_examples)
    report_path = os.path.join(out_dir, REPORT_FILE)
    fileio.write_text_atomic(report_path, _report(result, schema_source))
    fileio.write_text_atomic(
        os.path.join(out_dir, RESULT_FILE),
        json.dumps({k: v for k, v in asdict(result).items() if k != "out_dir"}, indent=2),
    )
    for line in anomalies:
        log.warning("validate: %s", line)
    log.info("validate: %s; examples per split %s", "passed" if result.passed else "FAILED", num_examples)
    if anomalies and config.fail_on_anomalies:
        listing = "\n".join(f"  - {line}" for line in anomalies)
        raise DataValidationError(
            f"data validation found {len(anomalies)} anomalies:\n{listing}\nSee {report_path}"
        )
    return result


def read_result(out_dir: str) -> ValidationResult:
    """Reads back the verdict of a finished validate run.

    Raises:
        FileNotFoundError: `out_dir` holds no validation.json, i.e. validate never finished there.
    """
    path = os.path.join(out_dir, RESULT_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: validate did not finish in {out_dir}")
    raw = json.loads(fileio.read_text(path))
    return ValidationResult(
        out_dir=out_dir,
        passed=bool(raw["passed"]),
        anomalies=[str(a) for a in raw["anomalies"]],
        num_examples={s: int(n) for s, n in raw["num_examples"].items()},
    )
