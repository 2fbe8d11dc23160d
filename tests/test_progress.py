"""The run's terminal view and task logs, on hand-made task output (the real run is in test_e2e.py)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

from radflow.pipeline import task_logs
from radflow.pipeline.progress import Console, StageView, duration, failure_reason, progress_text, stage_figures
from radflow.pipeline.task_logs import RunLog, TaskCapture


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_durations_read_like_a_person_would_say_them():
    assert [duration(s) for s in (0.04, 3.25, 59.9, 61, 221, 3725)] == [
        "0.0 s", "3.2 s", "59.9 s", "1 min 01 s", "3 min 41 s", "1 h 02 min"]


def test_progress_comes_from_keras_epochs_and_radflows_own_records_only():
    text = progress_text("Epoch 3/30", "")
    assert text == "epoch 3/30"
    step = "14/14 - 5s - 378ms/step - accuracy: 0.49 - auc: 0.63 - loss: 0.67 - val_accuracy: 0.48 - val_auc: 0.527"
    assert progress_text(step, text) == "epoch 3/30, val_auc 0.5270"
    record = "[KFP Executor 2026-12-01 22:46:26,368 INFO]: ingest progress: worker 7 has read 500 files (88.0 files/s)"
    assert progress_text(record, "x") == "ingest progress: worker 7 has read 500 files (88.0 files/s)"
    for noise in ("[KFP Executor 2026-12-01 22:46:19,886 INFO]: starting state server on port 46013",
                  "2026-12-01 22:46:30.295341: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] ...",
                  "    warnings.warn(message, FutureWarning)", '        "outputFile": "/x/executor_output.json"'):
        assert progress_text(noise, "epoch 3/30") == "epoch 3/30"


def _task_dir(tmp_path, name, artifacts):
    task_dir = tmp_path / name
    task_dir.mkdir()
    (task_dir / "executor_output.json").write_text(json.dumps({"artifacts": {
        k: {"artifacts": [{"name": k, "metadata": v}]} for k, v in artifacts.items()}}))
    return str(task_dir)


def test_stage_figures_come_from_the_metadata_the_tasks_recorded(tmp_path):
    ingest = _task_dir(tmp_path, "ingest", {"examples": {
        "states": {"ingested": 594, "quarantined": 6, "duplicate": 2},
        "counts": {"train": {"A": 400, "B": 43}, "val": {"A": 20, "B": 11}, "test": {"A": 100, "B": 20}}}})
    assert stage_figures("ingest", ingest) == ("594 ingested, 6 quarantined, 2 duplicates; "
                                               "train 443, val 31, test 120")
    evaluate = _task_dir(tmp_path, "evaluate", {
        "metrics": {"roc_auc": 0.98, "roc_auc_ci_low": 0.959, "roc_auc_ci_high": 0.996, "recall": 0.9556,
                    "specificity": 0.9},
        "evaluation": {"blessed": False}})
    assert stage_figures("evaluate", evaluate) == ("ROC AUC 0.980 [0.959, 0.996], sensitivity 0.956, "
                                                   "specificity 0.900; NOT blessed")
    train = _task_dir(tmp_path, "train", {"model": {"epochs_run": 24, "model": "baseline_cnn",
                                                    "best_val_auc": 0.94791, "best_epoch": 19}})
    assert stage_figures("train", train) == "24 epochs of baseline_cnn, best val AUC 0.9479 (epoch 19)"
    fold = _task_dir(tmp_path, "train-fold-2", {"fold_result": {"fold": 1, "val_auc": 0.8}})
    assert stage_figures("train-fold-2", fold) == "fold 1: val AUC 0.8000"
    validate = _task_dir(tmp_path, "validate", {"statistics": {"anomalies": 2, "warnings": 1, "baseline": "x.pb"}})
    assert stage_figures("validate", validate) == "2 anomalies, for validation-gate to act on, 1 warning(s)"
    assert stage_figures("push", str(tmp_path / "nowhere")) == ""  # no executor output: the duration alone
    assert stage_figures("validation-gate", str(tmp_path)) == "passed"


def test_a_failed_tasks_reason_is_the_exception_message_not_its_traceback():
    log = """[KFP Executor 2026-12-01 22:46:28,252 INFO]: Looking for component `validation_gate`
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/gate.py", line 36, in gate
    raise DataValidationError(f"data validation found {len(result.anomalies)} anomalies:\\n{listing}\\n"
radflow.components.validate.validate.DataValidationError: data validation found 1 anomalies:
  - split 'train', feature 'label_name': Unexpected string values
The validate task's report and statistics_report artifacts show the details.
"""
    assert failure_reason(log) == ["data validation found 1 anomalies:",
                                   "  - split 'train', feature 'label_name': Unexpected string values",
                                   "The validate task's report and statistics_report artifacts show the details."]
    chained = "Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'x'\n\nDuring handling " \
              "...:\n\nTraceback (most recent call last):\n  File \"b\", line 2\nValueError: ingest source 'x' " \
              "holds no files\n"
    assert failure_reason(chained) == ["ingest source 'x' holds no files"]
    assert failure_reason("Traceback (most recent call last):\n  File \"a\"\nKeyError: 'label'\n") == [
        "KeyError: 'label'"]
    assert failure_reason("no traceback at all\n") == []


def test_away_from_a_terminal_each_stage_prints_a_start_and_an_end_line_without_colour(tmp_path):
    out, clock = io.StringIO(), FakeClock()
    view = StageView(Console.for_stream(out), total=2, clock=clock)
    view.started("ingest")
    view.output("Epoch 1/3")  # progress is for a terminal only
    clock.now += 7.14
    view.finished("ingest", True, _task_dir(tmp_path, "ingest", {"examples": {"states": {"ingested": 3}}}), "x.log")
    view.started("train")
    clock.now += 75
    view.finished("train", False, str(tmp_path / "none"), "runs/r/logs/train.log")
    view.close()
    assert out.getvalue().splitlines() == [
        "[1/2] ingest          ...",
        "[1/2] ingest          done in 7.1 s: 3 ingested, 0 quarantined, 0 duplicates",
        "[2/2] train           ...",
        "[2/2] train           FAILED after 1 min 15 s (log: runs/r/logs/train.log)",
    ]


def test_on_a_terminal_the_running_stage_is_one_line_redrawn_in_place(tmp_path):
    out, clock = io.StringIO(), FakeClock()
    view = StageView(Console(out, live=True, color=True), total=1, clock=clock)
    view.started("train")
    clock.now += 2
    view.output("Epoch 4/30")
    view.finished("train", True, str(tmp_path), "x.log")
    view.close()
    text = out.getvalue()
    assert "[1/1] train                2.0 s  epoch 4/30" in text
    *_, last = text.split("\r\x1b[K")  # each redraw first clears the line
    assert last == "[1/1] train           \x1b[32mdone\x1b[0m in 2.0 s\n"


def _command(tmp_path, script: str) -> list[str]:
    """A command shaped like kfp.local's: the executor input names the task's folder."""
    output_file = tmp_path / "run" / "say-hello" / "executor_output.json"
    return ["sh", "-ec", script, "sh", "--executor_input", json.dumps({"outputs": {"outputFile": str(output_file)}})]


def test_a_tasks_output_goes_to_its_log_and_the_view_in_order(tmp_path):
    runs, out = [], io.StringIO()
    capture = TaskCapture(StageView(Console(out, live=False, color=False), 1), None, runs.append)
    script = "echo 'Epoch 1/2'; echo 'to stderr' >&2; printf '\\033[92mok\\033[0m\\n'; exit 3"
    code = capture.run_task(_command(tmp_path, script))
    assert code == 3 and runs == [str(tmp_path / "run")]
    log = tmp_path / "run" / "logs" / "say-hello.log"
    assert log.read_text() == "Epoch 1/2\nto stderr\nok\n"  # both streams, colour removed
    assert capture.tasks[0].code == 3 and capture.current is None
    assert out.getvalue().splitlines()[-1].startswith("[1/1] say-hello       FAILED after ")


def test_installed_capture_replaces_kfp_locals_streaming_and_restores_it(tmp_path):
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess
    capture = TaskCapture(None, io.StringIO(), lambda run_dir: None)
    with capture.installed():
        assert subprocess_task_handler.run_local_subprocess == capture.run_task
        assert subprocess_task_handler.run_local_subprocess(full_command=_command(tmp_path, "echo hi")) == 0
    assert subprocess_task_handler.run_local_subprocess is original
    assert capture.echo.getvalue() == "    hi\n"  # verbose: streamed as kfp.local indents it


def test_kfp_locals_own_messages_wait_for_the_run_folder_then_go_to_kfp_log(tmp_path):
    sink = RunLog()
    sink.write("\x1b[96m'ingest'\x1b[0m starts\n")
    sink.open(str(tmp_path / "kfp.log"))
    sink.write("and ends\n")
    sink.close()
    assert (tmp_path / "kfp.log").read_text() == "'ingest' starts\nand ends\n"


def _group(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            process_group=0)


def test_stopping_a_task_lets_python_say_where_it_was_and_kills_one_that_ignores_sigint(tmp_path, monkeypatch):
    monkeypatch.setattr(task_logs, "INTERRUPT_WAIT_S", 0.5)
    polite = _group("import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    assert polite.stdout.readline() == "working\n"
    with open(tmp_path / "polite.log", "w") as log:
        task_logs._stop(polite, log)
    assert polite.returncode != 0 and "KeyboardInterrupt" in (tmp_path / "polite.log").read_text()

    stubborn = _group("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('deaf', flush=True)\n"
                      "time.sleep(60)\n")
    assert stubborn.stdout.readline() == "deaf\n"
    started = time.monotonic()
    with open(tmp_path / "stubborn.log", "w") as log:
        task_logs._stop(stubborn, log)
    assert stubborn.returncode == -signal.SIGKILL and time.monotonic() - started < 10
    assert "did not stop on SIGINT" in (tmp_path / "stubborn.log").read_text()
    assert not os.path.exists(f"/proc/{stubborn.pid}")


def test_verbose_streams_kfps_messages_without_colour_off_a_terminal_and_keeps_them_in_kfp_log(tmp_path):
    out, kept = io.StringIO(), io.StringIO()
    echo = task_logs.Echo(out, plain=True, also=kept)
    echo.write("Task \x1b[96m'push'\x1b[0m finished\n")
    assert out.getvalue() == "Task 'push' finished\n" and kept.getvalue() == "Task \x1b[96m'push'\x1b[0m finished\n"
