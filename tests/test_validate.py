"""validate: TFDV statistics, schema, drift, skew, the written verdict and reports, and serving skew.

Each validate() call runs one small Beam pipeline, so the runs are shared through module-scoped
fixtures and the tests only look at their outputs. The datasets are written directly as
examples whose per-image features are measured from synthetic "source" images: a clean set, and
a drifted one (larger images, a 50/50 class mix, a batch of all-black test images).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from PIL import Image
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from radflow import cli
from radflow import examples as ex
from radflow.components.push import layout
from radflow.components.validate import drift as dr
from radflow.components.validate import schema as sc
from radflow.components.validate import skew as sk
from radflow.components.validate import validate as v
from radflow.components.validate.config import DriftThresholds, ValidateConfig

LABELS = ("NORMAL", "PNEUMONIA")
SIZE = 16  # stored pixels; the features describe the (larger) source images
COUNTS = {"train": 160, "val": 40, "test": 120}


def source_image(rng, kind: str = "xray", side: tuple[int, int] = (50, 66)) -> np.ndarray:
    """A source image: noisy grey of varying brightness and size, or all black."""
    h, w = (int(x) for x in rng.integers(*side, size=2))
    if kind == "black":
        return np.zeros((h, w, 1), np.uint8)
    return np.clip(rng.normal(rng.uniform(80, 170), 40, (h, w, 1)), 0, 255).astype(np.uint8)


def write_examples(root, per_split: dict[str, list[tuple[int, str, np.ndarray]]], patients: int = 0) -> str:
    """One shard per split of (label, label_name, source image) examples, and metadata.json.

    Every `patients` consecutive examples of a split share a patient key (0: no keys).
    """
    rng = np.random.default_rng(1)
    counts = {}
    for split, items in per_split.items():
        if items:
            os.makedirs(os.path.join(root, split), exist_ok=True)
            with tf.io.TFRecordWriter(os.path.join(root, split, f"{split}-00000-of-00001.tfrecord")) as w:
                for i, (label, name, source) in enumerate(items):
                    key = f"{split}-{name}-{i // patients}" if patients else ""
                    info = ex.ImageFeatures.measure(source, "JPEG", patient_key=key)
                    pixels = rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
                    w.write(ex.make_example(pixels, label, name, info))
        names = LABELS + tuple(sorted({n for _, n, _ in items} - set(LABELS)))
        counts[split] = {name: sum(1 for _, n, _ in items if n == name) for name in names}
    ex.write_metadata(str(root), ex.DatasetMetadata(LABELS, SIZE, 1, counts))
    return str(root)


def mixed(n: int, normal_share: float, seed: int, **image) -> list[tuple[int, str, np.ndarray]]:
    """n examples, the first round(n * normal_share) NORMAL, the rest PNEUMONIA."""
    rng = np.random.default_rng(seed)
    k = round(n * normal_share)
    return [(int(i >= k), LABELS[int(i >= k)], source_image(rng, **image)) for i in range(n)]


def clean_splits(seed: int = 0) -> dict[str, list]:
    return {split: mixed(n, 0.25, seed + i) for i, (split, n) in enumerate(COUNTS.items())}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean dataset (25% NORMAL, 4 images per patient), validated with the default config."""
    root = tmp_path_factory.mktemp("clean")
    examples = write_examples(root / "examples", clean_splits(), patients=4)
    return examples, v.validate(examples, str(root / "validation"))


@pytest.fixture(scope="module")
def drifted_examples(tmp_path_factory):
    """Train and val: images twice as large and a 50/50 class mix; test: 40 of 120 images all black."""
    root = tmp_path_factory.mktemp("drifted")
    rng = np.random.default_rng(7)
    test = mixed(120, 0.25, 8)
    for i in range(0, 120, 3):
        test[i] = (test[i][0], test[i][1], source_image(rng, "black"))
    splits = {"train": mixed(160, 0.5, 5, side=(100, 132)), "val": mixed(40, 0.5, 6, side=(100, 132)), "test": test}
    return write_examples(root / "examples", splits)


@pytest.fixture(scope="module")
def drift_blocked(clean, drifted_examples, tmp_path_factory):
    """The drifted set against the clean run's train statistics, through the CLI with the default
    config (drift blocks, skew warns): (exit code, stderr, the verdict it wrote)."""
    _, baseline_run = clean
    out = str(tmp_path_factory.mktemp("blocked") / "validation")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["validate", drifted_examples, out,
                         "--baseline", os.path.join(baseline_run.out_dir, v.TRAIN_STATISTICS)])
    return code, err.getvalue(), v.read_result(out)


@pytest.fixture(scope="module")
def drift_warned(clean, drifted_examples, tmp_path_factory):
    """The same, with drift configured to warn and skew to block, and the curated schema given by path."""
    _, baseline_run = clean
    out = str(tmp_path_factory.mktemp("warned") / "validation")
    config = ValidateConfig(fail_on_anomalies=False, drift_action="warn", skew_action="block", schema_name="",
                            schema_path=sc.curated_path("chest_xray"))
    return v.validate(drifted_examples, out, config, baseline=os.path.join(baseline_run.out_dir, v.TRAIN_STATISTICS))


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """val empty, an unknown label in test, no curated schema (so one is inferred): (error, verdict)."""
    root = tmp_path_factory.mktemp("broken")
    test = mixed(5, 0.4, 3) + [(2, "COVID19", source_image(np.random.default_rng(0)))]
    examples = write_examples(root / "examples", {"train": mixed(8, 0.5, 1), "val": [], "test": test})
    out = str(root / "validation")
    with pytest.raises(v.DataValidationError) as raised:
        v.validate(examples, out, ValidateConfig(schema_name=""))
    return str(raised.value), v.read_result(out)


def findings(lines: list[str], *needles: str) -> list[str]:
    return [line for line in lines if all(n in line for n in needles)]


# --- a clean dataset -------------------------------------------------------------------------------


def test_clean_dataset_passes(clean):
    _, result = clean
    out = result.out_dir
    assert result.passed and result.anomalies == [] and result.warnings == []
    assert result.num_examples == COUNTS
    for split in ex.SPLITS:
        stats = tfdv.load_stats_binary(os.path.join(out, v.STATISTICS_DIR, f"{split}.pb"))
        assert stats.datasets[0].num_examples == COUNTS[split]
        # Only the scalar features are profiled: never the pixels, never the patient identifier.
        assert {f.path.step[0] for f in stats.datasets[0].features} == set(v.PROFILED_FEATURES)
    assert not os.path.exists(os.path.join(out, ".scratch"))
    assert "No anomalies." in open(os.path.join(out, v.REPORT_FILE)).read()
    assert v.read_result(out) == result
    assert json.load(open(os.path.join(out, v.RESULT_FILE)))["passed"] is True


def test_clean_dataset_is_checked_against_the_curated_schema(clean):
    _, result = clean
    written = tfdv.load_schema_text(os.path.join(result.out_dir, v.SCHEMA_FILE))
    assert written == tfdv.load_schema_text(sc.curated_path("chest_xray"))
    assert "curated 'chest_xray'" in open(os.path.join(result.out_dir, v.REPORT_FILE)).read()


def test_patients_are_counted_per_class_and_split(clean):
    _, result = clean
    # 4 consecutive examples per patient; NORMAL is the first 25% of each split.
    assert result.patients == {"train": {"NORMAL": 10, "PNEUMONIA": 30}, "val": {"NORMAL": 3, "PNEUMONIA": 8},
                               "test": {"NORMAL": 8, "PNEUMONIA": 23}}
    assert "| train | 160 | 10 | 30 |" in open(os.path.join(result.out_dir, v.REPORT_FILE)).read()


def test_images_without_a_patient_key_count_as_their_own_patient(broken):
    _, result = broken
    assert result.patients == {"train": {"NORMAL": 4, "PNEUMONIA": 4},
                               "test": {"NORMAL": 2, "PNEUMONIA": 3, "COVID19": 1}}


def test_clean_splits_are_compared_and_stay_under_the_thresholds(clean):
    _, result = clean
    assert [(c.kind, c.name) for c in result.comparisons] == [
        ("skew", "split 'val' vs split 'train'"), ("skew", "split 'test' vs split 'train'")]
    test_vs_train = result.comparisons[1]
    assert test_vs_train.num_examples == 120
    assert {d.feature for d in test_vs_train.drifts} == set(v.PROFILED_FEATURES) - {ex.LABEL}
    assert not any(d.exceeded for d in test_vs_train.drifts)


# --- stopped or warned, as configured ------------------------------------------------------------


def test_unknown_label_in_test_split_fails(broken):
    message, result = broken
    assert "split 'test', feature 'label_name'" in message
    assert "split 'test', feature 'label'" in message
    assert "COVID19" in message and "expected one of ['NORMAL', 'PNEUMONIA']" in message
    assert os.path.join(result.out_dir, v.REPORT_FILE) in message
    assert "split 'train'," not in message
    # The outputs are written before the error is raised.
    assert not result.passed and len(findings(result.anomalies, "split 'test', feature 'label")) == 2
    assert "COVID19" in open(os.path.join(result.out_dir, v.REPORT_FILE)).read()


def test_changed_image_size_distribution_is_stopped(drift_blocked):
    _, _, drift_blocked = drift_blocked
    assert not drift_blocked.passed
    for feature in (ex.ORIG_HEIGHT, ex.ORIG_WIDTH):
        [line] = findings(drift_blocked.anomalies, "split 'train' vs the last blessed run's train",
                          f"feature {feature!r}: Jensen-Shannon divergence — expected at most 0.1; found")
        before, after = map(float, re.search(r"mean ([\d.]+) -> ([\d.]+)", line).groups())
        assert 1.8 < after / before < 2.2  # ~58 px -> ~116 px
    assert not findings(drift_blocked.anomalies, "feature 'aspect_ratio'")  # both sides scaled alike


def test_shifted_class_mix_is_stopped(drift_blocked):
    _, _, drift_blocked = drift_blocked
    [line] = findings(drift_blocked.anomalies, "split 'train' vs the last blessed run's train",
                      "feature 'label_name': L-infinity distance — expected at most 0.1; found 0.250")
    assert "25.0% -> 50.0%" in line


def test_batch_of_all_black_images_is_stopped_by_the_schema_and_warned_as_skew(drift_blocked):
    _, _, drift_blocked = drift_blocked
    [line] = findings(drift_blocked.anomalies, "split 'test', feature 'std_intensity'")
    assert f"expected a float in [{sc.MIN_STD_INTENSITY}, 255.0]" in line and "found" in line
    assert not findings(drift_blocked.anomalies, "split 'train', feature")  # train has no blank image
    for feature in (ex.NEAR_BLACK_FRACTION, ex.MEAN_INTENSITY):
        assert findings(drift_blocked.warnings, "split 'test' vs split 'train'", f"feature {feature!r}")
    assert not findings(drift_blocked.anomalies, "vs split 'train'")  # skew only warns by default


def test_the_configured_action_decides_between_stopping_and_warning(drift_blocked, drift_warned):
    _, _, drift_blocked = drift_blocked
    def drift_lines(lines):
        return findings(lines, "vs the last blessed run's train")

    assert drift_lines(drift_blocked.anomalies) and not drift_lines(drift_blocked.warnings)
    assert sorted(drift_lines(drift_warned.warnings)) == sorted(drift_lines(drift_blocked.anomalies))
    assert not drift_lines(drift_warned.anomalies)
    skew_blocked = findings(drift_warned.anomalies, "split 'test' vs split 'train'")
    assert sorted(skew_blocked) == sorted(findings(drift_blocked.warnings, "split 'test' vs split 'train'"))
    # The explicit schema path was used, and the blank images still break it.
    assert findings(drift_warned.anomalies, "split 'test', feature 'std_intensity'")


def test_small_comparisons_are_reported_but_not_acted_on(drift_blocked):
    _, _, drift_blocked = drift_blocked
    val = next(c for c in drift_blocked.comparisons if c.name == "split 'val' vs split 'train'")
    assert val.num_examples == 40 < ValidateConfig().min_examples
    assert not findings(drift_blocked.anomalies + drift_blocked.warnings, "split 'val' vs")
    assert "Only 40 examples on one side" in open(os.path.join(drift_blocked.out_dir, v.REPORT_FILE)).read()


def test_cli_exit_message_names_split_feature_and_finding(drift_blocked):
    code, err, result = drift_blocked
    assert code == 1 and "validation failed" in err
    assert "split 'train' vs the last blessed run's train" in err and "feature 'orig_height'" in err
    assert "split 'test', feature 'std_intensity'" in err and os.path.join(result.out_dir, v.REPORT_FILE) in err
    assert len(findings(err.splitlines(), "  - split")) == len(result.anomalies)  # every reason, one per line
    assert os.path.exists(os.path.join(result.out_dir, v.HTML_FILE))  # written before the run failed


# --- reports ---------------------------------------------------------------------------------------


def test_html_report_is_self_contained_with_histograms_per_feature(drift_blocked):
    _, _, drift_blocked = drift_blocked
    page = open(os.path.join(drift_blocked.out_dir, v.HTML_FILE)).read()
    assert "<script" not in page and "http" not in page  # opens offline: nothing loaded from elsewhere
    for feature in v.PROFILED_FEATURES:
        assert f"<h3>{feature}</h3>" in page
    assert page.count("src='data:image/png;base64,") == len(v.PROFILED_FEATURES)
    assert "last blessed train" in page and "EXCEEDED" in page and "FAILED" in page
    assert "<th>median</th>" in page and "<th>top value</th>" in page


def test_empty_split_is_an_anomaly(broken):
    _, result = broken
    assert result.num_examples == {"train": 8, "val": 0, "test": 6}
    [line] = findings(result.anomalies, "split 'val'")
    assert line.startswith("split 'val' is empty")
    assert not os.path.exists(os.path.join(result.out_dir, v.STATISTICS_DIR, "val.pb"))  # TFDV not run
    report = open(os.path.join(result.out_dir, v.REPORT_FILE)).read()
    assert "| val | 0 |" in report and line in report
    assert v.read_result(result.out_dir) == result


def test_a_split_without_a_class_is_an_anomaly_naming_split_and_class(tmp_path):
    splits = {"train": mixed(40, 0.5, 1), "val": mixed(10, 0.0, 2), "test": mixed(20, 0.5, 3)}  # val: no NORMAL
    examples = write_examples(tmp_path / "examples", splits, patients=2)
    with pytest.raises(v.DataValidationError) as raised:
        v.validate(examples, str(tmp_path / "validation"), ValidateConfig(schema_name=""))
    [line] = findings(str(raised.value).splitlines(), "split 'val' has no 'NORMAL' examples")
    assert "threshold" in line and not findings(str(raised.value).splitlines(), "split 'test' has no")


def test_inferred_schema_carries_label_domain_ranges_and_presence(broken):
    _, result = broken
    assert "inferred from train" in open(os.path.join(result.out_dir, v.REPORT_FILE)).read()
    schema = tfdv.load_schema_text(os.path.join(result.out_dir, v.SCHEMA_FILE))
    assert list(tfdv.get_domain(schema, ex.LABEL_NAME).value) == list(LABELS)
    assert list(tfdv.get_domain(schema, ex.SOURCE_FORMAT).value) == list(sc.SOURCE_FORMATS)
    label = tfdv.get_domain(schema, ex.LABEL)
    assert (label.min, label.max) == (0, len(LABELS) - 1)
    assert not schema.string_domain  # the inferred schema-level copies are gone
    std = tfdv.get_feature(schema, ex.STD_INTENSITY).float_domain
    assert (std.min, std.max) == (sc.MIN_STD_INTENSITY, 255.0)
    assert tfdv.get_feature(schema, ex.NEAR_BLACK_FRACTION).float_domain.max == 1.0
    assert all(f.presence.min_fraction == 1.0 for f in schema.feature)
    for name in ex.HEADER_FEATURES.values():  # DICOM header text: required to be present, any value
        assert tfdv.get_feature(schema, name).WhichOneof("domain_info") is None


def test_missing_inputs_and_bad_actions_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        v.validate(str(tmp_path), str(tmp_path / "out"))
    examples = write_examples(tmp_path / "examples", {"train": [], "val": [], "test": []})
    with pytest.raises(FileNotFoundError, match="schema_path"):
        v.validate(examples, str(tmp_path / "out"), ValidateConfig(schema_path=str(tmp_path / "nope.pbtxt")))
    with pytest.raises(FileNotFoundError, match="baseline"):
        v.validate(examples, str(tmp_path / "out"), baseline=str(tmp_path / "nope.pb"))
    with pytest.raises(ValueError, match="drift_action 'stop'"):
        v.validate(examples, str(tmp_path / "out"), ValidateConfig(drift_action="stop"))
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


# --- the drift baseline and the curated schema ---------------------------------------------------


def test_baseline_is_the_highest_published_versions_train_statistics(clean, tmp_path):
    _, result = clean
    root = str(tmp_path / "models")
    assert v.last_blessed_statistics(root, "radflow") == ""  # nothing published
    assert v.last_blessed_statistics("", "radflow") == ""  # no serving root
    for version in (1, 2):
        os.makedirs(os.path.join(root, "radflow", str(version), layout.LINEAGE_DIR))
    kept = os.path.join(root, "radflow", "1", layout.LINEAGE_DIR, layout.TRAIN_STATISTICS_FILE)
    shutil.copyfile(os.path.join(result.out_dir, v.TRAIN_STATISTICS), kept)
    assert v.last_blessed_statistics(root, "radflow") == ""  # the live version (2) kept none: not an older one
    latest = os.path.join(root, "radflow", "2", layout.LINEAGE_DIR, layout.TRAIN_STATISTICS_FILE)
    shutil.copyfile(kept, latest)
    assert v.last_blessed_statistics(root, "radflow") == latest


def test_schema_freeze_copies_a_finished_runs_schema(clean, tmp_path, capsys):
    _, result = clean
    run = tmp_path / "run"
    shutil.copytree(result.out_dir, run / "validate" / "statistics")
    assert cli.main(["schema", "freeze", str(run), "--name", "xray_v2", "--dir", str(tmp_path / "curated")]) == 0
    frozen = tmp_path / "curated" / "xray_v2.pbtxt"
    assert str(frozen) in capsys.readouterr().out
    assert tfdv.load_schema_text(str(frozen)) == tfdv.load_schema_text(os.path.join(result.out_dir, v.SCHEMA_FILE))
    assert frozen.read_text().startswith("# Curated radflow schema 'xray_v2'")
    with pytest.raises(ValueError, match="plain file name"):
        sc.freeze(str(run), "../elsewhere", str(tmp_path))
    shutil.copytree(result.out_dir, run / "other")
    with pytest.raises(ValueError, match="2 validate outputs"):
        sc.freeze(str(run), "x", str(tmp_path))
    os.remove(run / "other" / v.RESULT_FILE)  # unfinished: no longer a candidate
    assert sc.find_schema(str(run)) == str(run / "validate" / "statistics" / v.SCHEMA_FILE)
    with pytest.raises(FileNotFoundError, match="no finished validate output"):
        sc.freeze(str(tmp_path / "curated"), "x", str(tmp_path))


# --- drift math, by hand -------------------------------------------------------------------------


def test_js_divergence_matches_hand_values():
    half = [(0.0, 1.0, 1.0), (1.0, 2.0, 1.0)]
    assert dr.js_divergence(half, half) == 0.0
    assert dr.js_divergence([(0.0, 1.0, 5.0)], [(2.0, 3.0, 5.0)]) == pytest.approx(1.0)  # disjoint
    # (1/2, 1/2) vs (1, 0): M = (3/4, 1/4); JS = (1/2)[KL(P||M) + KL(Q||M)] in bits.
    p, m = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    expected = 0.5 * (np.sum(p * np.log2(p / m)) + np.log2(1.0 / 0.75))
    assert dr.js_divergence(half, [(0.0, 1.0, 4.0), (1.0, 2.0, 0.0)]) == pytest.approx(expected)
    # Different bucket edges over the same uniform distribution: rebucketed, no divergence.
    assert dr.js_divergence([(0.0, 2.0, 2.0)], half) == pytest.approx(0.0)
    # A point mass (every value 8) against 90% 8 and 10% 16: close, not disjoint.
    assert dr.js_divergence([(8.0, 8.0, 10.0)], [(8.0, 8.0, 9.0), (8.0, 16.0, 0.0), (16.0, 16.0, 1.0)]) < 0.1


def test_linf_distance_matches_hand_values():
    assert dr.linf_distance({"A": 0.25, "B": 0.75}, {"A": 0.5, "B": 0.5}) == (0.25, "A")
    assert dr.linf_distance({"A": 1.0}, {"B": 1.0}) == (1.0, "A")
    assert dr.linf_distance({}, {}) == (0.0, "")


# --- serving skew ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_validation(examples_dir, tmp_path_factory):
    """The session's ingested synthetic set (real ingest output), validated with the default config."""
    return v.validate(examples_dir, str(tmp_path_factory.mktemp("sample") / "validation"))


def test_real_ingest_output_passes_the_curated_schema(sample_validation):
    assert sample_validation.passed and sample_validation.anomalies == []
    assert sum(sample_validation.patients["train"].values()) > 0


def _encoded_test_images(examples_dir: str) -> list[bytes]:
    from radflow.components.ingest.ingest import INGESTED, read_manifest

    paths = [r["path"] for r in read_manifest(examples_dir) if r["split"] == "test" and r["state"] == INGESTED]
    return [open(p, "rb").read() for p in paths]


def test_serving_requests_are_measured_exactly_as_ingest_measured_them(examples_dir, sample_validation):
    train_like = tfdv.load_stats_binary(os.path.join(sample_validation.out_dir, v.STATISTICS_DIR, "test.pb"))
    requests = _encoded_test_images(examples_dir)
    metadata = ex.read_metadata(examples_dir)  # a JPEG is measured at the scale ingest decoded it at
    report = sk.serving_skew(requests, train_like, DriftThresholds(), image_size=metadata.image_size,
                             resize_policy=metadata.resize_policy)
    assert report.num_images == len(requests) and report.undecodable == 0
    assert {d.feature for d in report.drifts} == set(sk.REQUEST_FEATURES)
    # The same images, through the serving path: the same features, so the same histograms.
    assert all(d.value == pytest.approx(0.0, abs=1e-9) for d in report.drifts), report.drifts
    assert report.describe() == []


def test_serving_skew_reports_a_batch_of_black_requests(examples_dir, sample_validation, tmp_path):
    train = sk.load_statistics(os.path.join(sample_validation.out_dir, v.TRAIN_STATISTICS))
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((300, 280), np.uint8)).save(black)
    requests = [black.read_bytes()] * 20 + _encoded_test_images(examples_dir)[:10] + [b"not an image"]
    report = sk.serving_skew(requests, train, image_size=ex.read_metadata(examples_dir).image_size)
    assert report.num_images == 31 and report.undecodable == 1
    exceeded = {d.feature for d in report.exceeded}
    assert {ex.NEAR_BLACK_FRACTION, ex.MEAN_INTENSITY, ex.STD_INTENSITY, ex.SOURCE_FORMAT} <= exceeded
    [line] = [x for x in report.describe() if "'source_format'" in x]
    assert line.startswith("serving requests (30 images) vs training, feature 'source_format': L-infinity")
    assert "'JPEG': 100.0% -> 33.3%" in line  # JPEG and PNG moved alike; the first in order is named
    with pytest.raises(ValueError, match="none of the 1 request images"):
        sk.serving_skew([b"junk"], train)


def test_js_divergence_agrees_with_tfdvs_own_comparator():
    import pandas as pd

    rng = np.random.default_rng(0)
    before = tfdv.generate_statistics_from_dataframe(pd.DataFrame({"x": rng.normal(0, 1, 500)}))
    after = tfdv.generate_statistics_from_dataframe(pd.DataFrame({"x": rng.normal(1, 1, 500)}))
    schema = tfdv.infer_schema(before)
    tfdv.get_feature(schema, "x").drift_comparator.jensen_shannon_divergence.threshold = 0.0
    anomalies = tfdv.validate_statistics(after, schema, previous_statistics=before)
    tfdv_value = float(re.search(r"between current and previous is ([\d.]+)",
                                 anomalies.anomaly_info["x"].reason[0].description).group(1))
    [drift] = dr.compare(after.datasets[0], before.datasets[0], DriftThresholds())
    assert drift.value == pytest.approx(tfdv_value, abs=1e-3) and drift.value > 0.1


def test_a_curated_schema_for_other_labels_says_how_to_proceed():
    """A brain-MRI set run with the default chest X-ray schema is told what to change, not just what failed."""
    from radflow.components.validate import schema as sc

    schema = tfdv.load_schema_text(sc.curated_path("chest_xray"))
    brain = ex.DatasetMetadata(("glioma", "meningioma", "no_tumor"), SIZE, 1, {})
    (line,) = v._label_set_mismatch(schema, brain, ValidateConfig(schema_name="chest_xray"))
    assert "'chest_xray' is for labels ['NORMAL', 'PNEUMONIA']" in line and "rerun with --schema infer" in line
    chest = ex.DatasetMetadata(("NORMAL", "PNEUMONIA"), SIZE, 1, {})
    assert v._label_set_mismatch(schema, chest, ValidateConfig(schema_name="chest_xray")) == []
    assert v._label_set_mismatch(schema, brain, ValidateConfig(schema_name="")) == []


def test_a_class_that_is_all_png_is_a_shortcut_named_source_format(tmp_path):
    """DeGrave et al. 2021's trap: COVID19 images come from one source (all PNG), the others are JPEG."""
    labels = ("COVID19", "NORMAL", "PNEUMONIA")
    rng = np.random.default_rng(5)
    counts = {}
    for split, n in (("train", 90), ("val", 30), ("test", 30)):
        os.makedirs(tmp_path / "examples" / split)
        counts[split] = dict.fromkeys(labels, 0)
        with tf.io.TFRecordWriter(str(tmp_path / "examples" / split / f"{split}-0.tfrecord")) as w:
            for i in range(n):
                c = i % 3
                info = ex.ImageFeatures.measure(source_image(rng), "PNG" if c == 0 else "JPEG",
                                                patient_key=f"{split}-{i}")
                w.write(ex.make_example(rng.integers(0, 256, (SIZE, SIZE, 1), np.uint8), c, labels[c], info))
                counts[split][labels[c]] += 1
    ex.write_metadata(str(tmp_path / "examples"), ex.DatasetMetadata(labels, SIZE, 1, counts))
    result = v.validate(str(tmp_path / "examples"), str(tmp_path / "validation"), ValidateConfig(schema_name=""))
    [line] = result.shortcuts
    assert "feature 'source_format' alone predicts 'COVID19' at one-feature ROC AUC 1.000" in line
    assert "PNG in 40 of 40 COVID19 images, 0 of 80 others" in line
    assert line in result.warnings and line not in result.anomalies  # warn by default
    assert line in open(tmp_path / "validation" / v.REPORT_FILE).read()
    assert v.read_result(str(tmp_path / "validation")).shortcuts == [line]
    with pytest.raises(v.DataValidationError, match="source_format"):
        v.validate(str(tmp_path / "examples"), str(tmp_path / "blocked"),
                   ValidateConfig(schema_name="", shortcut_action="block"))


def test_no_shortcut_when_formats_are_mixed_across_classes(clean):
    _, result = clean
    assert result.shortcuts == []
