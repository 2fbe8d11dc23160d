"""validate: TFDV statistics, the pinned label domain, empty splits and the written verdict.

Each validate() call runs one small Beam pipeline per non-empty split, so the runs are shared
through module-scoped fixtures and the tests only look at their outputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from radflow import examples as ex
from radflow.components.validate import validate as v

LABELS = ("NORMAL", "PNEUMONIA")
SIZE = 16


def write_examples(root, per_split: dict[str, list[tuple[int, str]]]) -> str:
    """Writes one shard per split holding the given (label, label_name) examples, and metadata.json."""
    rng = np.random.default_rng(0)
    counts = {}
    for split, items in per_split.items():
        if items:
            os.makedirs(os.path.join(root, split), exist_ok=True)
            with tf.io.TFRecordWriter(os.path.join(root, split, f"{split}-00000-of-00001.tfrecord")) as w:
                for label, name in items:
                    pixels = rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
                    info = ex.ImageFeatures.measure(pixels, "JPEG")
                    w.write(ex.make_example(pixels, label, name, info))
        names = LABELS + tuple(sorted({n for _, n in items} - set(LABELS)))
        counts[split] = {name: sum(1 for _, n in items if n == name) for name in names}
    ex.write_metadata(str(root), ex.DatasetMetadata(LABELS, SIZE, 1, counts))
    return str(root)


def balanced(n: int) -> list[tuple[int, str]]:
    return [(i % 2, LABELS[i % 2]) for i in range(n)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean dataset, validated once with an inferred schema."""
    root = tmp_path_factory.mktemp("clean")
    splits = {"train": balanced(12), "val": balanced(4), "test": balanced(6)}
    examples = write_examples(root / "examples", splits)
    out = str(root / "validation")
    return examples, v.validate(examples, out)


@pytest.fixture(scope="module")
def empty_val(tmp_path_factory):
    """val has no examples; validated with fail_on_anomalies off."""
    root = tmp_path_factory.mktemp("empty_val")
    examples = write_examples(root / "examples", {"train": balanced(8), "val": [], "test": balanced(4)})
    out = str(root / "validation")
    return v.validate(examples, out, v.ValidateConfig(fail_on_anomalies=False))


def test_clean_dataset_passes(clean):
    _, result = clean
    out = result.out_dir
    assert result.passed and result.anomalies == []
    assert result.num_examples == {"train": 12, "val": 4, "test": 6}
    for split in ex.SPLITS:
        stats = tfdv.load_stats_binary(os.path.join(out, v.STATISTICS_DIR, f"{split}.pb"))
        assert stats.datasets[0].num_examples == result.num_examples[split]
        # Only the scalar features are profiled, never the pixels.
        assert {f.path.step[0] for f in stats.datasets[0].features} == set(v.PROFILED_FEATURES)
    assert not os.path.exists(os.path.join(out, v.STATISTICS_DIR, ".tfdv-scratch"))
    assert "No anomalies." in open(os.path.join(out, v.REPORT_FILE)).read()
    assert v.read_result(out) == result
    assert json.load(open(os.path.join(out, v.RESULT_FILE))) == {
        "passed": True, "anomalies": [], "num_examples": {"train": 12, "val": 4, "test": 6}
    }


def test_schema_pins_label_domain_from_metadata(clean):
    _, result = clean
    schema = tfdv.load_schema_text(os.path.join(result.out_dir, v.SCHEMA_FILE))
    assert list(tfdv.get_domain(schema, ex.LABEL_NAME).value) == list(LABELS)
    label = tfdv.get_domain(schema, ex.LABEL)
    assert (label.min, label.max) == (0, len(LABELS) - 1)
    assert ex.LABEL_NAME not in {d.name for d in schema.string_domain}  # the inferred copy is gone


def test_unknown_label_in_test_split_fails(tmp_path):
    test = balanced(5) + [(2, "COVID19")]
    examples = write_examples(tmp_path / "examples", {"train": balanced(8), "val": balanced(4), "test": test})
    out = str(tmp_path / "validation")
    with pytest.raises(v.DataValidationError) as raised:
        v.validate(examples, out)
    message = str(raised.value)
    assert "split 'test', feature 'label_name'" in message
    assert "split 'test', feature 'label'" in message
    assert "COVID19" in message and "expected one of ['NORMAL', 'PNEUMONIA']" in message
    assert os.path.join(out, v.REPORT_FILE) in message
    assert "split 'train'" not in message and "split 'val'" not in message
    # The outputs are written before the error is raised.
    result = v.read_result(out)
    assert not result.passed and len(result.anomalies) == 2
    assert "COVID19" in open(os.path.join(out, v.REPORT_FILE)).read()


def test_empty_split_is_an_anomaly(empty_val):
    assert not empty_val.passed
    assert empty_val.num_examples == {"train": 8, "val": 0, "test": 4}
    assert len(empty_val.anomalies) == 1
    assert empty_val.anomalies[0].startswith("split 'val' is empty")
    assert not os.path.exists(os.path.join(empty_val.out_dir, v.STATISTICS_DIR, "val.pb"))  # TFDV not run


def test_no_fail_returns_result_and_reports(empty_val):
    report = open(os.path.join(empty_val.out_dir, v.REPORT_FILE)).read()
    assert "| val | 0 |" in report and "| train | 8 |" in report
    assert empty_val.anomalies[0] in report and "No anomalies." not in report
    assert v.read_result(empty_val.out_dir) == empty_val


def test_curated_schema_is_used(clean, tmp_path):
    examples, result = clean
    schema = tfdv.load_schema_text(os.path.join(result.out_dir, v.SCHEMA_FILE))
    schema.feature[0].annotation.tag.append("curated")  # a mark inference would not produce
    curated = str(tmp_path / "curated.pbtxt")
    tfdv.write_schema_text(schema, curated)
    again = v.validate(examples, str(tmp_path / "validation"), v.ValidateConfig(schema_path=curated))
    assert again.passed and again.num_examples == result.num_examples
    assert tfdv.load_schema_text(os.path.join(again.out_dir, v.SCHEMA_FILE)) == schema


def test_missing_inputs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        v.validate(str(tmp_path), str(tmp_path / "out"))
    examples = write_examples(tmp_path / "examples", {"train": [], "val": [], "test": []})
    with pytest.raises(FileNotFoundError, match="schema_path"):
        config = v.ValidateConfig(schema_path=str(tmp_path / "nope.pbtxt"))
        v.validate(examples, str(tmp_path / "out"), config)
    with pytest.raises(FileNotFoundError, match="validation.json"):
        v.read_result(str(tmp_path / "out"))


def test_anomaly_lines_name_split_feature_expectation_and_finding():
    schema = schema_pb2.Schema()
    feature = schema.feature.add(name="label", type=schema_pb2.INT)
    feature.int_domain.min, feature.int_domain.max = 0, 1
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["label"]
    info.path.step.append("label")
    info.reason.add(short_description="Out-of-range values", description="Unexpectedly large value: 2.")
    assert v._describe("val", anomalies, schema) == [
        "split 'val', feature 'label': Out-of-range values — expected an integer in [0, 1]; "
        "found: Unexpectedly large value: 2."
    ]
