"""One real end-to-end run: `radflow run --local` on a small synthetic set, through kfp.local."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from radflow.cli import main
from radflow.components.train.train import CLASSES, SCORES, SERVING_INPUT
from radflow.pipeline.progress import shown
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
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out[-3000:] + captured.err[-3000:]
    assert "pushed version 1" in out and "called right per class: NORMAL " in out
    assert "a typical test NORMAL image (median NORMAL score)" in out
    (run_dir,) = os.listdir(tmp_path / "runs")
    _assert_a_person_can_read_it(out, captured.err, tmp_path / "runs" / run_dir)

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
    assert set(os.listdir(tmp_path / "runs" / run_dir)) >= {"ingest", "validate", "class-balance", "train",
                                                            "evaluate", "push"}


TASKS = ("ingest", "validate", "validation-gate", "class-balance", "train", "evaluate", "push")


def _assert_a_person_can_read_it(out: str, err: str, run_dir):
    """The terminal shows the run in ~20 lines of radflow's own; everything else is in the task logs."""
    lines = (out + err).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    noise = ("executor_input", "KFP Executor", "Unable to register", "Warning", "Epoch ", "ran out of data",
             "Traceback", "\x1b[", "Streamed logs", "finished with status")
    assert not [line for line in lines if any(n in line for n in noise)], "\n".join(lines)
    assert lines[0].startswith("radflow run: ") and lines[0].endswith(
        f" -> {shown(run_dir)} (every task's log: {shown(run_dir / 'logs')}/)")
    done = {t: next((line for line in lines if line.startswith(f"[{i}/7] {t} ") and " done in " in line), None)
            for i, t in enumerate(TASKS, start=1)}
    assert all(done.values()), "\n".join(lines)
    assert re.search(r"done in [\d.]+ s: \d+ ingested, \d+ quarantined, \d+ duplicates; train \d+", done["ingest"])
    assert re.search(r"\d+ epochs of baseline_cnn, best val AUC 0\.\d{4} \(epoch \d+\)", done["train"])
    assert re.search(r"ROC AUC 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\], sensitivity .*; blessed", done["evaluate"])
    assert re.search(r"version 1 at \S+/radflow/1$", done["push"])
    assert out.splitlines().count("== radflow run finished ==") == 1
    # ... and nothing is lost: each task's whole output is in its log, kfp.local's own in kfp.log.
    logs = run_dir / "logs"
    assert {p.name for p in logs.iterdir()} == {f"{t}.log" for t in TASKS} | {"kfp.log", "config.yaml"}
    train_log = (logs / "train.log").read_text()
    assert "Epoch 1/15" in train_log and "train: OneDeviceStrategy" in train_log
    assert "ingest: pipeline finished" in (logs / "ingest.log").read_text()
    assert "Executing task 'push'" in (logs / "kfp.log").read_text()
    assert "\x1b[" not in (logs / "kfp.log").read_text()


@pytest.mark.e2e
def test_a_failed_validation_publishes_its_reports_and_the_next_task_stops_the_run(tmp_path, capsys):
    """Validate completes and publishes anomalies.md and statistics.html; validation_gate fails the run.

    On a KFP cluster a failed task publishes no artifacts (launcher_v2.go, see gate.py), so the split
    is what gets the reports into the UI; kfp.local runs the same DAG, and the same split shows here.
    """
    from radflow.components.validate.config import CURATED_DIR

    data = str(tmp_path / "data")
    synthesize(data, n=80, seed=3, min_side=64, max_side=96)
    schema = tmp_path / "other_labels.pbtxt"  # the curated schema, frozen for another label set
    with open(os.path.join(CURATED_DIR, "chest_xray.pbtxt")) as f:
        schema.write_text(f.read().replace('value: "PNEUMONIA"', 'value: "OTHER"'))
    config = tmp_path / "config.yaml"
    config.write_text(f"ingest: {{image_size: 32}}\nvalidate: {{schema_path: {schema}}}\n")

    code = main(["run", "--local", "--data", data, "--serving-root", str(tmp_path / "models"),
                 "--pipeline-root", str(tmp_path / "runs"), "--config", str(config)])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["ingest", "logs", "validate"]  # nothing after the gate ran
    report, page = run_dir / "validate" / "report", run_dir / "validate" / "statistics_report"
    gate_log = run_dir / "logs" / "validation-gate.log"
    failed = next(line for line in captured.out.splitlines() if line.startswith("[3/7] validation-gate FAILED after "))
    assert failed.endswith(f"(log: {shown(gate_log)})")
    err_lines = err.splitlines()
    assert err_lines[0].startswith("radflow run: validation-gate failed: data validation found ")
    assert f"radflow run: validate's reports: {shown(report)}, {shown(page)}" in err_lines
    # The last line says what to do: these labels are not the schema's.
    assert err_lines[-1].startswith("radflow run: this dataset's labels are not the schema's: rerun with "
                                    "--schema infer")
    assert "Traceback" not in captured.out + err and "DataValidationError" in gate_log.read_text()
    assert "Unexpected string values" in report.read_text() and "PNEUMONIA" in report.read_text()
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    # kfp.local recorded both as the validate task's published output artifacts.
    outputs = json.loads((run_dir / "validate" / "executor_output.json").read_text())["artifacts"]
    assert {"report", "statistics_report", "statistics"} <= set(outputs)
    assert not (tmp_path / "models").exists()


@pytest.mark.e2e
def test_ctrl_c_stops_every_task_says_so_in_one_line_and_offers_to_resume(tmp_path):
    """SIGINT to the terminal's process group during train: exit 130, one line, no traceback, --resume offered."""
    import signal
    import subprocess
    import sys
    import time

    from radflow.pipeline.run import resume_config

    data = str(tmp_path / "data")
    synthesize(data, n=120, seed=1, min_side=64, max_side=96)  # conftest's set: val holds both classes at 0.2
    config = tmp_path / "config.yaml"
    config.write_text("ingest: {image_size: 32, val_fraction: 0.2}\ntrain: {epochs: 200, patience: 200}\n")
    runs = tmp_path / "runs"
    run = subprocess.Popen([sys.executable, "-m", "radflow.cli", "run", "--data", data, "--config", str(config),
                            "--serving-root", str(tmp_path / "models"), "--pipeline-root", str(runs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and run.poll() is None:  # until train has finished two epochs
        logs = list(runs.glob("*/logs/train.log"))
        if logs and "Epoch 3/200" in logs[0].read_text():
            break
        time.sleep(0.5)
    assert run.poll() is None, run.communicate()
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = run.communicate(timeout=60)
    (run_dir,) = runs.iterdir()
    assert run.returncode == 130, out + err
    assert out.splitlines()[-1].startswith("[5/7] train           interrupted after ")
    assert "Traceback" not in out + err and len(err.splitlines()) == 1
    assert err == (f"radflow run: interrupted during train; the partial run is in {shown(str(run_dir))}; nothing "
                   f"was pushed; `radflow run --resume {shown(str(run_dir))}` goes on from train's state after "
                   f"epoch {err.rsplit('epoch ', 1)[-1].strip()}\n")
    assert int(err.rsplit("epoch ", 1)[-1]) >= 2
    assert "KeyboardInterrupt" in (run_dir / "logs" / "train.log").read_text()  # the task said where it stopped
    assert not (tmp_path / "models").exists()
    resumed = resume_config(str(run_dir))  # what --resume runs: the same config, train on the saved state
    assert resumed.data == data and resumed.train.epochs == 200
    assert resumed.train.backup_dir == str(run_dir / "train" / "model" / "backup")
