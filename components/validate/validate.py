"""validate: profile every split with TFDV and stop the run before training on data it should not trust.

One Beam pipeline (DirectRunner here, any runner via the config) reads every split once and
computes TFDV statistics over the per-image features stored beside the pixels (label, original
size, aspect ratio, bit depth, source format, intensity mean/std/percentiles, near-black and
near-white shares, DICOM modality and view), never the pixel bytes, and counts distinct patients
per class per split.

Three checks follow, each naming split, feature, what was expected and what was found:
- schema: every split against the curated schema (`schema_name`, see schema.py), or against one
  inferred from train on a first run (written as an artifact, to be frozen);
- drift: this run's train against the train statistics of the last blessed run (`baseline`, kept
  by push beside each published version);
- skew: val and test against train.
Drift and skew use Jensen-Shannon divergence on numeric features and L-infinity distance on
categorical ones (drift.py); over a threshold they block or warn, as configured. An empty split
is an anomaly too.

`validation.json` is written last, so its presence means validate finished; the run then fails
(by default) if anything blocking was found, after writing the reports that explain why.

    radflow validate runs/examples runs/validation --serving-root models
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx_bsl.public.tfxio import TFExampleRecord

from radflow import beam_runner, fileio
from radflow import examples as ex
from radflow.components.push import layout
from radflow.components.validate import drift as dr
from radflow.components.validate import schema as sc
from radflow.components.validate.config import ACTIONS, BLOCK, INFER_SCHEMA_ADVICE, ValidateConfig
from radflow.components.validate.report import write_statistics_html
from radflow.components.validate.shortcuts import find_shortcuts, read_features

log = logging.getLogger(__name__)

# The patient key is an identifier: its values differ between splits by design, so a domain
# inferred from train would flag every test patient. Patients are counted, not profiled. The DICOM
# header fields are ("" for other formats): a shift in modality or view position is drift.
PROFILED_FEATURES = tuple(f for f in ex.SCALAR_FEATURES if f != ex.PATIENT_KEY) + tuple(ex.HEADER_FEATURES.values())
STATISTICS_DIR = "statistics"  # <split>.pb: binary DatasetFeatureStatisticsList per split
# The file push keeps beside each published version; the next run's drift baseline.
TRAIN_STATISTICS = os.path.join(STATISTICS_DIR, "train.pb")
SCHEMA_FILE = sc.SCHEMA_FILE  # the schema every split was validated against
REPORT_FILE = "anomalies.md"  # human-readable verdict: anomalies, warnings, drift, patients
HTML_FILE = "statistics.html"  # per-feature histograms and summaries per split, self-contained
RESULT_FILE = sc.RESULT_FILE  # machine-readable result; written last

# Why each split must not be empty, for the anomaly line.
_SPLIT_NEEDS = {
    "train": "training needs examples to fit the model",
    "val": "training needs a validation split for early stopping and model selection",
    "test": "evaluation needs a test split to gate the model before it is pushed",
}

# Why each split needs every class, for the anomaly line.
_CLASS_NEEDS = {
    "train": "the model cannot learn a class it never sees",
    "val": "early stopping and the operating threshold are chosen without that class",
    "test": "the model cannot be evaluated, or gated, on that class",
}


@dataclass(frozen=True)
class Comparison:
    """Drift of one dataset against a reference, feature by feature.

    Args:
        name: what was compared, e.g. "split 'test' vs split 'train'".
        kind: "drift" (vs the last blessed run) or "skew" (between splits); decides the configured action.
        drifts: one per shared feature, exceeded or not.
        num_examples: examples on the smaller side; below ValidateConfig.min_examples nothing is acted on.
    """

    name: str
    kind: str
    drifts: list[dr.Drift]
    num_examples: int


@dataclass(frozen=True)
class ValidationResult:
    out_dir: str
    passed: bool
    anomalies: list[str]  # one readable line per blocking finding: split, feature, what was expected, what was found
    num_examples: dict[str, int]  # split -> examples, from the statistics
    warnings: list[str] = field(default_factory=list)  # findings configured to warn, same form as anomalies
    patients: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> distinct patients
    comparisons: list[Comparison] = field(default_factory=list)  # drift and skew, every feature
    shortcuts: list[str] = field(default_factory=list)  # features that alone predict the label, one line each


class DataValidationError(RuntimeError):
    """The data broke the schema, drifted, or a split is unusable; the message lists why and names the report."""


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


class _PatientsPerClass(beam.CombineFn):
    """Distinct patients per class from RecordBatches, in one combine: an image without a key is its own patient.

    The accumulator holds the keys themselves (a few MB for 100k patients), so no shuffle is needed.
    """

    def create_accumulator(self) -> tuple[dict[str, set[str]], dict[str, int]]:
        return {}, {}

    def add_input(self, acc, batch: pa.RecordBatch):
        keyed, unkeyed = acc

        def column(name: str) -> list:
            index = batch.schema.get_field_index(name)
            return batch.column(index).to_pylist() if index >= 0 else [None] * batch.num_rows

        for label, key in zip(column(ex.LABEL_NAME), column(ex.PATIENT_KEY), strict=True):
            name = label[0].decode() if label else ""
            if key and key[0]:
                keyed.setdefault(name, set()).add(key[0])
            else:
                unkeyed[name] = unkeyed.get(name, 0) + 1
        return acc

    def merge_accumulators(self, accumulators):
        keyed, unkeyed = {}, {}
        for k, u in accumulators:
            for name, keys in k.items():
                keyed.setdefault(name, set()).update(keys)
            for name, n in u.items():
                unkeyed[name] = unkeyed.get(name, 0) + n
        return keyed, unkeyed

    def extract_output(self, acc) -> dict[str, int]:
        keyed, unkeyed = acc
        return {name: len(keyed.get(name, ())) + unkeyed.get(name, 0) for name in sorted(set(keyed) | set(unkeyed))}


def _profile(
    examples_dir: str, splits: list[str], scratch_dir: str, config: ValidateConfig
) -> tuple[dict[str, statistics_pb2.DatasetFeatureStatisticsList], dict[str, dict[str, int]]]:
    """One Beam pipeline over all `splits`: TFDV statistics of the scalar features, and patients per class.

    Results go through files under `scratch_dir` (inside `out_dir`) rather than a local temp dir,
    so that remote runners, which cannot see this machine's /tmp, can write them too.
    """
    options = tfdv.StatsOptions(feature_allowlist=list(PROFILED_FEATURES))
    paths = {s: (os.path.join(scratch_dir, f"{s}.pb"), os.path.join(scratch_dir, f"{s}-patients.json"))
             for s in splits}
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={config.runner}", *config.beam_args]))
    for split in splits:
        stats_path, patients_path = paths[split]
        source = TFExampleRecord(ex.shard_pattern(examples_dir, split), telemetry_descriptors=["radflow"])
        batches = pipeline | f"Read[{split}]" >> source.BeamSource()
        _ = (batches
             | f"Statistics[{split}]" >> tfdv.GenerateStatistics(options)
             | f"WriteStatistics[{split}]" >> tfdv.WriteStatisticsToBinaryFile(stats_path))
        _ = (batches
             | f"Patients[{split}]" >> beam.CombineGlobally(_PatientsPerClass())
             | f"Json[{split}]" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
             | f"WritePatients[{split}]" >> beam.io.WriteToText(patients_path, shard_name_template=""))
    with _quiet_beam():
        beam_runner.run(pipeline)
    stats = {s: tfdv.load_stats_binary(paths[s][0]) for s in splits}
    patients = {s: json.loads(fileio.read_text(paths[s][1])) for s in splits}
    tf.io.gfile.rmtree(scratch_dir)
    return stats, patients


def _num_examples(stats: statistics_pb2.DatasetFeatureStatisticsList) -> int:
    return int(stats.datasets[0].num_examples) if stats.datasets else 0


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


def _load_schema(
    config: ValidateConfig, train: statistics_pb2.DatasetFeatureStatisticsList | None, metadata: ex.DatasetMetadata
) -> tuple[schema_pb2.Schema | None, str]:
    """The schema to validate against and where it came from: explicit path, curated name, or inferred."""
    if config.schema_path:
        return tfdv.load_schema_text(config.schema_path), config.schema_path
    curated = sc.curated_path(config.schema_name) if config.schema_name else ""
    if curated and tf.io.gfile.exists(curated):
        return tfdv.load_schema_text(curated), f"curated {config.schema_name!r} ({curated})"
    if train is None:
        return None, "none (no curated schema and an empty train split to infer one from)"
    missing = f"no curated schema {config.schema_name!r} yet; " if config.schema_name else ""
    log.info("validate: %sinferring the schema from train (freeze it with `radflow schema freeze`)", missing)
    return sc.infer(train, metadata), f"inferred from train ({missing}freeze it with `radflow schema freeze RUN`)"


def _label_set_mismatch(schema: schema_pb2.Schema, metadata: ex.DatasetMetadata, config: ValidateConfig) -> list[str]:
    """One anomaly, saying what to do, when a curated schema was frozen for another label set.

    The per-split label anomalies that follow say which values were unexpected; this line says why:
    e.g. a brain-MRI set validated against the default chest X-ray schema.
    """
    domain = tuple(tfdv.get_feature(schema, ex.LABEL_NAME).string_domain.value)
    if not config.schema_name or config.schema_path or not domain or set(domain) == set(metadata.label_names):
        return []
    return [f"dataset: the curated schema {config.schema_name!r} is for labels {list(domain)}, but this dataset's "
            f"labels are {list(metadata.label_names)}: {INFER_SCHEMA_ADVICE}"]


def last_blessed_statistics(serving_root: str, model_name: str) -> str:
    """The train statistics kept beside the highest published version, the drift baseline; "" if none.

    Args:
        serving_root: TF Serving's model base (local or gs://); "" for none.
        model_name: the pushed model's name.

    Returns:
        The statistics file, or "" when nothing is published yet or the last version kept no statistics.
    """
    if not serving_root:
        return ""
    model_root = os.path.join(serving_root, model_name)
    version = layout.live_version(model_root)
    if version is None:
        log.info("validate: nothing published under %s yet; no drift baseline, drift not checked", model_root)
        return ""
    path = os.path.join(layout.version_path(model_root, version), layout.LINEAGE_DIR, layout.TRAIN_STATISTICS_FILE)
    if not tf.io.gfile.exists(path):
        log.info("validate: version %d kept no %s; drift not checked", version, layout.TRAIN_STATISTICS_FILE)
        return ""
    log.info("validate: drift baseline: version %d's train statistics %s", version, path)
    return path


def _compare(
    stats: dict[str, statistics_pb2.DatasetFeatureStatisticsList], baseline: str, config: ValidateConfig
) -> list[Comparison]:
    """Train against the baseline (drift), then val and test against train (skew)."""
    if "train" not in stats:
        return []
    train = stats["train"].datasets[0]
    pairs = []
    if baseline:
        pairs.append((f"split 'train' vs the last blessed run's train ({baseline})", "drift", train,
                      tfdv.load_stats_binary(baseline).datasets[0]))
    pairs.extend((f"split {split!r} vs split 'train'", "skew", stats[split].datasets[0], train)
                 for split in ("val", "test") if split in stats)
    return [Comparison(name, kind, dr.compare(current, reference, config.thresholds),
                       int(min(current.num_examples, reference.num_examples)))
            for name, kind, current, reference in pairs]


def _report(result: ValidationResult, schema_source: str, min_examples: int) -> str:
    """The Markdown report: the verdict, examples and patients per split, findings, then every comparison."""
    classes = sorted({c for per_class in result.patients.values() for c in per_class})
    header = "| split | examples | " + " | ".join(f"patients {c}" for c in classes) + " |"
    rows = "\n".join(
        f"| {split} | {n} | " + " | ".join(str(result.patients.get(split, {}).get(c, 0)) for c in classes) + " |"
        for split, n in result.num_examples.items()
    )
    anomalies = "\n".join(f"- {line}" for line in result.anomalies) or "No anomalies."
    warnings = "\n".join(f"- {line}" for line in result.warnings) or "No warnings."
    status = "passed" if result.passed else f"FAILED ({len(result.anomalies)} anomalies)"
    parts = [
        f"# Data validation: {status}\n\nSchema: {schema_source}\n",
        f"{header}\n|{'---|' * (2 + len(classes))}\n{rows}\n",
        f"## Anomalies\n\n{anomalies}\n",
        f"## Warnings\n\n{warnings}\n",
        "## Shortcuts\n\n" + ("\n".join(f"- {line}" for line in result.shortcuts) if result.shortcuts else
                              "No per-image metadata feature alone predicts the label.") + "\n",
    ]
    for comparison in result.comparisons:
        table = "\n".join(
            f"| {d.feature} | {d.metric} | {d.value:.3f} | {d.threshold:g} | {'EXCEEDED' if d.exceeded else 'ok'} "
            f"| {d.detail} |"
            for d in comparison.drifts
        )
        note = ("" if comparison.num_examples >= min_examples else
                f"Only {comparison.num_examples} examples on one side (< min_examples {min_examples}): "
                "reported, not acted on.\n\n")
        parts.append(f"## {comparison.kind.capitalize()}: {comparison.name}\n\n{note}"
                     f"| feature | metric | found | max | | what moved |\n|---|---|---|---|---|---|\n{table}\n")
    return "\n".join(parts)


def validate(
    examples_dir: str, out_dir: str, config: ValidateConfig = ValidateConfig(), baseline: str = ""
) -> ValidationResult:
    """Computes statistics per split, checks schema, drift and skew, and writes the verdict.

    Args:
        examples_dir: a finished ingest output (shards per split and metadata.json).
        out_dir: receives statistics/<split>.pb, schema.pbtxt, anomalies.md, statistics.html and, last,
            validation.json.
        config: the schema, thresholds and actions, whether anomalies fail the run, and the Beam runner.
        baseline: the last blessed run's train statistics (see `last_blessed_statistics`); "" = no drift check.

    Returns:
        The verdict; `passed` is False only when `config.fail_on_anomalies` is off.

    Raises:
        FileNotFoundError: `examples_dir` has no metadata.json, or the schema or baseline is missing.
        ValueError: an action in the config is neither "block" nor "warn".
        DataValidationError: something blocking was found and `config.fail_on_anomalies` is set; the
            outputs are written first.
    """
    metadata = ex.read_metadata(examples_dir)
    for name, action in (("drift_action", config.drift_action), ("skew_action", config.skew_action),
                         ("shortcut_action", config.shortcut_action)):
        if action not in ACTIONS:
            raise ValueError(f"validate {name} {action!r} is not one of {ACTIONS}")
    for what, path in (("schema_path", config.schema_path), ("baseline", baseline)):
        if path and not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{what} {path!r} does not exist")
    tf.io.gfile.makedirs(out_dir)
    stale = os.path.join(out_dir, RESULT_FILE)
    if tf.io.gfile.exists(stale):  # a rerun must not look finished, or passed, before it is
        tf.io.gfile.remove(stale)

    anomalies: list[str] = []
    num_examples: dict[str, int] = {}
    present = []
    for split in ex.SPLITS:
        expected = metadata.split_size(split)
        if not ex.split_files(examples_dir, split) or expected == 0:
            why = "it has no shards" if expected else "metadata.json counts 0 examples"
            anomalies.append(f"split {split!r} is empty ({why}): {_SPLIT_NEEDS[split]}")
            num_examples[split] = 0
        else:
            present.append(split)
    stats, patients = (
        _profile(examples_dir, present, os.path.join(out_dir, ".scratch"), config) if present else ({}, {})
    )
    for split in present:
        num_examples[split] = found = _num_examples(stats[split])
        log.info("validate: split %s has %d examples, patients per class %s", split, found, patients[split])
        if found != metadata.split_size(split):
            anomalies.append(f"split {split!r}: the shards hold {found} examples but metadata.json counts "
                             f"{metadata.split_size(split)}")
        path = os.path.join(out_dir, STATISTICS_DIR, f"{split}.pb")
        fileio.write_bytes_atomic(path, stats[split].SerializeToString())
        for label in metadata.label_names:
            if found and not patients[split].get(label):
                anomalies.append(f"split {split!r} has no {label!r} examples ({found} examples of "
                                 f"{sorted(patients[split])}): {_CLASS_NEEDS[split]}")

    schema, schema_source = _load_schema(config, stats.get("train") if num_examples.get("train") else None, metadata)
    if schema is not None:
        anomalies.extend(_label_set_mismatch(schema, metadata, config))
        tfdv.write_schema_text(schema, os.path.join(out_dir, SCHEMA_FILE))
        for split, split_stats in stats.items():
            if num_examples[split]:
                anomalies.extend(_describe(split, tfdv.validate_statistics(split_stats, schema), schema))

    comparisons = _compare({s: st for s, st in stats.items() if num_examples[s]}, baseline, config)
    warnings: list[str] = []
    for comparison in comparisons:
        found = [d.describe(comparison.name) for d in comparison.drifts if d.exceeded]
        if found and comparison.num_examples < config.min_examples:
            log.info("validate: %s: %d features over a threshold, but only %d examples (min_examples %d): "
                     "not acted on", comparison.name, len(found), comparison.num_examples, config.min_examples)
            continue
        action = config.drift_action if comparison.kind == "drift" else config.skew_action
        (anomalies if action == BLOCK else warnings).extend(found)

    pooled = tuple(s for s in ("train", "val") if num_examples.get(s))
    shortcuts = [s.describe(config.shortcut_auc) for s in find_shortcuts(
        read_features(examples_dir, pooled, metadata), metadata.label_names, config.shortcut_auc)] if pooled else []
    (anomalies if config.shortcut_action == BLOCK else warnings).extend(shortcuts)

    result = ValidationResult(out_dir, not anomalies, anomalies, num_examples, warnings, patients, comparisons,
                              shortcuts)
    report_path = os.path.join(out_dir, REPORT_FILE)
    fileio.write_text_atomic(report_path, _report(result, schema_source, config.min_examples))
    baseline_stats = tfdv.load_stats_binary(baseline) if baseline else None
    write_statistics_html(os.path.join(out_dir, HTML_FILE), stats, baseline_stats, result, schema_source,
                          config.min_examples)
    fileio.write_text_atomic(os.path.join(out_dir, RESULT_FILE), _to_json(result))
    for line in warnings:
        log.warning("validate: warning: %s", line)
    for line in anomalies:
        log.warning("validate: %s", line)
    log.info("validate: %s; examples per split %s", "passed" if result.passed else "FAILED", num_examples)
    if anomalies and config.fail_on_anomalies:
        listing = "\n".join(f"  - {line}" for line in anomalies)
        raise DataValidationError(f"data validation found {len(anomalies)} anomalies:\n{listing}\nSee {report_path}")
    return result


def _to_json(result: ValidationResult) -> str:
    return json.dumps({k: v for k, v in asdict(result).items() if k != "out_dir"}, indent=2)


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
        warnings=[str(w) for w in raw.get("warnings", [])],
        patients={s: {c: int(n) for c, n in per.items()} for s, per in raw.get("patients", {}).items()},
        comparisons=[
            Comparison(c["name"], c["kind"], [dr.Drift(**d) for d in c["drifts"]], int(c["num_examples"]))
            for c in raw.get("comparisons", [])
        ],
        shortcuts=[str(s) for s in raw.get("shortcuts", [])],
    )
