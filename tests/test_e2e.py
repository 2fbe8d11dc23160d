"""One real end-to-end run: `radflow run --local` on a small synthetic set, through kfp.local."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from radflow.cli import main
from radflow.components.train.train import CLASSES, SCORES, SERVING_INPUT
from radflow.synth import synthesize


@pytest.mark.e2e
def test_local_run_pushes_a_servable_model(tmp_path, capsys):
    data, serving_root = str(tmp_path / "data"), tmp_path / "models"
    synthesize(data, n=240, seed=7, min_side=64, max_side=128)
    config = tmp_path / "config.yaml"
    # Training order is not reproducible (parallel ingest and tf.data), so on a set this small the
    # gate only asks for a clearly better-than-chance model; the gates themselves are tested in
    # test_evaluate.py. A larger val split steadies early stopping and the threshold, and without
    # augmentation 15 epochs at 64 px land at test ROC AUC 0.90-0.93 (4 runs; 0.74-1.0 with it).
    config.write_text("ingest: {image_size: 64, val_fraction: 0.25}\n"
                      "train: {epochs: 15, batch_size: 16, augment: false}\n"
                      "evaluate: {min_roc_auc: 0.7, min_roc_auc_ci_lower: 0, min_sensitivity: 0, "
                      "min_sensitivity_ci_lower: 0, min_specificity: 0, min_specificity_ci_lower: 0}\n")

    code = main(["run", "--local", "--data", data, "--serving-root", str(serving_root),
                 "--pipeline-root", str(tmp_path / "runs"), "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "pushed version 1" in out and "serving_default on" in out

    version_dir = serving_root / "radflow" / "1"
    assert (version_dir / "saved_model.pb").exists()
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    test_dir = os.path.join(data, "test", "PNEUMONIA")
    image = tf.io.read_file(os.path.join(test_dir, sorted(os.listdir(test_dir))[0]))
    result = serve(**{SERVING_INPUT: tf.stack([image, image])})
    assert result[SCORES].shape == (2, 2)
    assert np.allclose(result[SCORES].numpy().sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in result[CLASSES].numpy()[0]] == ["NORMAL", "PNEUMONIA"]
    # Every task left its outputs under the pipeline root.
    (run_dir,) = os.listdir(tmp_path / "runs")
    assert set(os.listdir(tmp_path / "runs" / run_dir)) >= {"ingest", "validate", "class-balance", "train",
                                                            "evaluate", "push"}


@pytest.mark.e2e
def test_a_failed_validation_publishes_its_reports_and_the_next_task_stops_the_run(tmp_path, capsys):
    """Validate completes and publishes anomalies.md and statistics.html; validation_gate fails the run.

    On a KFP cluster a failed task publishes no artifacts (launcher_v2.go, see gate.py), so the split
    is what gets the reports into the UI; kfp.local runs the same DAG, and the same split shows here.
    """
    from radflow.components.validate.schema import CURATED_DIR

    data = str(tmp_path / "data")
    synthesize(data, n=80, seed=3, min_side=64, max_side=96)
    schema = tmp_path / "other_labels.pbtxt"  # the curated schema, frozen for another label set
    with open(os.path.join(CURATED_DIR, "chest_xray.pbtxt")) as f:
        schema.write_text(f.read().replace('value: "PNEUMONIA"', 'value: "OTHER"'))
    config = tmp_path / "config.yaml"
    config.write_text(f"ingest: {{image_size: 32}}\nvalidate: {{schema_path: {schema}}}\n")

    code = main(["run", "--local", "--data", data, "--serving-root", str(tmp_path / "models"),
                 "--pipeline-root", str(tmp_path / "runs"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["ingest", "validate"]  # nothing after the gate ran
    report, page = run_dir / "validate" / "report", run_dir / "validate" / "statistics_report"
    assert f"validate's reports: {report}, {page}" in err
    assert "Unexpected string values" in report.read_text() and "PNEUMONIA" in report.read_text()
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    # kfp.local recorded both as the validate task's published output artifacts.
    outputs = json.loads((run_dir / "validate" / "executor_output.json").read_text())["artifacts"]
    assert {"report", "statistics_report", "statistics"} <= set(outputs)
    assert not (tmp_path / "models").exists()
