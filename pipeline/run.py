"""Runs the whole pipeline on this machine with kfp.local's SubprocessRunner.

Each task runs as a subprocess of this Python environment, exactly the component code a
cluster runs in the image. Outputs land under `<pipeline_root>/radflow-<timestamp>/<task>/`;
what each task printed, in `.../logs/<task>.log` (with kfp.local's own messages in kfp.log and
the run's config in config.yaml). The terminal shows one line per stage (pipeline/progress.py);
`verbose` streams all of it as well, as kfp.local does (without colour off a terminal).

    radflow run --local --data data/sample --serving-root models
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import warnings
from dataclasses import dataclass, replace
from typing import Any, TextIO

import yaml

from radflow.components.train.config import BACKUP_DIR
from radflow.components.validate.config import INFER_SCHEMA_ADVICE, RESULT_FILE
from radflow.pipeline.config import PipelineConfig, load_config, to_dict
from radflow.pipeline.progress import Console, StageView, failure_reason, shown
from radflow.pipeline.task_logs import KFP_LOG, LOGS_DIR, Echo, RunLog, TaskCapture

CONFIG_FILE = "config.yaml"  # in RUN/logs/: the run's whole config, what `radflow run --resume RUN` reruns
TRAIN_TASK, TRAIN_OUTPUT = "train", "model"  # the train task's folder and its output artifact


@dataclass(frozen=True)
class LocalRunResult:
    run_dir: str
    examples_dir: str
    evaluation_dir: str
    metrics: dict[str, float]
    blessing: Any  # evaluate's Blessing
    pushed: dict  # push.json: pushed, reason, version, path


class TaskFailed(RuntimeError):
    """A task of a local run failed.

    Args:
        task: its name, e.g. "validation-gate".
        log: its log file.
        reason: the message lines it failed with (from the log's traceback), or [].
        run_dir: the run's folder.
        advice: what to do about it, when radflow can tell; else "".
    """

    def __init__(self, task: str, log: str, reason: list[str], run_dir: str, advice: str = ""):
        self.task, self.log, self.reason, self.run_dir, self.advice = task, log, reason, run_dir, advice
        super().__init__(f"{task} failed: " + "\n".join(reason or [f"see {log}"]))


class RunInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a local run.

    Args:
        run_dir: the partial run's folder (None if no task had started).
        task: the task that was running, or None.
        resumable_epoch: the last epoch train finished and kept state for, when `radflow run
            --resume RUN_DIR` can go on from it; else 0.
        pushed_version: the version this run published before it was stopped, or None.
    """

    def __init__(self, run_dir: str | None, task: str | None, resumable_epoch: int, pushed_version: int | None):
        self.run_dir, self.task, self.resumable_epoch = run_dir, task, resumable_epoch
        self.pushed_version = pushed_version
        super().__init__(f"interrupted during {task or 'start-up'}")


def run_local(config: PipelineConfig, out: TextIO | None = None, verbose: bool = False) -> LocalRunResult:
    """Runs the pipeline under kfp.local and returns what evaluate and push reported.

    Args:
        config: the pipeline config; relative paths are taken from the current directory.
        out: where the stage lines go (default sys.stdout).
        verbose: stream every task's output to `out` instead of the stage lines.

    Returns:
        The run's folder, the evaluation metrics, the blessing and the push result.

    Raises:
        TaskFailed: a task failed; names its log, the error it ended with and, when it can, what to do.
        RunInterrupted: KeyboardInterrupt during the run; every task process has been stopped.
    """
    from kfp import local

    from radflow.pipeline.pipeline import build_pipeline

    out = out or sys.stdout
    config = replace(config, data=_absolute(config.data), serving_root=_absolute(config.serving_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(config.pipeline_root))
    pipeline = build_pipeline(config)
    console = Console.for_stream(out)
    view = None if verbose else StageView(console, len(pipeline.pipeline_spec.root.dag.tasks))
    kfp_log = RunLog()

    def started(run_dir: str) -> None:
        logs = os.path.join(run_dir, LOGS_DIR)
        kfp_log.open(os.path.join(logs, KFP_LOG))
        with open(os.path.join(logs, CONFIG_FILE), "w") as f:
            yaml.safe_dump(to_dict(replace(config, pipeline_root=os.path.abspath(config.pipeline_root))), f,
                           sort_keys=False)
        if view:
            console.line(f"radflow run: {shown(config.data)} -> {shown(run_dir)} (every task's log: {shown(logs)}/)")

    capture = TaskCapture(view, Echo(out, plain=not console.live) if verbose else None, started)
    # kfp.local's own messages (executor input, outputs, banners) go to kfp.log; with verbose, to `out` too.
    kfp_out = Echo(out, plain=not console.live, also=kfp_log) if verbose else kfp_log
    try:
        with capture.installed(), _redirected(kfp_out), warnings.catch_warnings():
            # kfp.local warns when a base image name lacks "python"; ours is the project's own
            # Python image, and locally every task runs in this very environment anyway.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            run = pipeline()
    except KeyboardInterrupt:
        task = capture.current.name if capture.current else None
        pushed = _pushed_by(capture.run_dir, config) if task == "push" else None
        raise RunInterrupted(capture.run_dir, task, resumable_epoch(capture.run_dir) if task == TRAIN_TASK
                             else 0, pushed) from None
    except RuntimeError as err:
        failed = next((t for t in capture.tasks if t.code not in (0, None)), None)
        if failed is None or capture.run_dir is None:
            raise
        with open(failed.log, errors="replace") as f:
            reason = failure_reason(f.read())
        raise TaskFailed(failed.name, failed.log, reason, capture.run_dir,
                         _advice(capture.run_dir, failed.name)) from err
    finally:
        if view:
            view.close()
        kfp_log.close()
    from radflow.components.evaluate.evaluate import METRICS_FILE, read_blessing

    evaluation_dir = run.outputs["evaluation"].path
    with open(run.outputs["pushed"].path) as f:
        pushed = json.load(f)
    with open(os.path.join(evaluation_dir, METRICS_FILE)) as f:
        metrics = json.load(f)["metrics"]
    return LocalRunResult(capture.run_dir, run.outputs["examples"].path, evaluation_dir, metrics,
                          read_blessing(evaluation_dir), pushed)


@contextlib.contextmanager
def _redirected(sink: TextIO):
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _pushed_by(run_dir: str | None, config: PipelineConfig) -> int | None:
    """The version the run in `run_dir` published (its lineage's run_id is the run's folder name), if any."""
    from radflow.components.push import layout

    model_root = os.path.join(config.serving_root, config.push.model_name)
    if not run_dir or not (os.path.isdir(model_root) or "://" in model_root):
        return None
    mine = [v for v in layout.versions(model_root)
            if layout.read_lineage(model_root, v).get("run_id") == os.path.basename(run_dir)]
    return max(mine, default=None)


def validation_reports(run_dir: str) -> list[str]:
    """The reports validate published in a run whose validation_gate stopped it; else []."""
    validate_dir = os.path.join(run_dir, "validate")
    if not os.path.isfile(os.path.join(validate_dir, "statistics", RESULT_FILE)):
        return []
    return [os.path.join(validate_dir, "report"), os.path.join(validate_dir, "statistics_report")]


def _advice(run_dir: str, task: str) -> str:
    """What to do after `task` failed, when the run's outputs tell; else ""."""
    if task != "validation-gate":
        return ""
    try:
        with open(os.path.join(run_dir, "validate", "statistics", RESULT_FILE)) as f:
            anomalies = json.load(f).get("anomalies", [])
    except (OSError, ValueError):
        return ""
    from radflow.examples import LABEL_NAME

    if any(INFER_SCHEMA_ADVICE in line or f"feature '{LABEL_NAME}'" in line for line in anomalies):
        advice = INFER_SCHEMA_ADVICE.replace("freeze RUN ", f"freeze {shown(run_dir)} ")
        return f"this dataset's labels are not the schema's: {advice}"
    return "read validate's report, fix the data (or the schema), and run again"


def resumable_epoch(run_dir: str | None) -> int:
    """The last epoch whose BackupAndRestore state an interrupted run's train task kept; 0 for none.

    Args:
        run_dir: a local run's folder.

    Returns:
        The epoch (of the phase train was in), or 0 when a rerun would start training over.
    """
    if not run_dir:
        return 0
    epochs = []
    for path in glob.glob(os.path.join(backup_dir(run_dir), "final", "*", "state", "training_metadata.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(path) as f:
                epochs.append(int(json.load(f)["epoch"]))  # BackupAndRestore counts finished epochs
    done = glob.glob(os.path.join(backup_dir(run_dir), "final", "*", "done.json"))
    return max(epochs, default=0) or (1 if done else 0)


def backup_dir(run_dir: str) -> str:
    """Where the train task of a local run keeps its fault-tolerance state (train.backup_dir's default)."""
    return os.path.join(run_dir, TRAIN_TASK, TRAIN_OUTPUT, BACKUP_DIR)


def resume_config(run_dir: str) -> PipelineConfig:
    """The config of an interrupted run, with train resuming from that run's saved state.

    Args:
        run_dir: the interrupted run's folder.

    Returns:
        Its config with train.backup_dir pointing at its train task's state.

    Raises:
        FileNotFoundError: `run_dir` is not a local run's folder.
        ValueError: train kept no state there, so a rerun would start over.
    """
    path = os.path.join(run_dir, LOGS_DIR, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a radflow run folder: it holds no {LOGS_DIR}/{CONFIG_FILE}")
    if not resumable_epoch(run_dir):
        raise ValueError(f"{run_dir}: train kept no state to resume from; run again without --resume "
                         "(a new run starts over)")
    config = load_config(path)
    return replace(config, train=replace(config.train, backup_dir=os.path.abspath(backup_dir(run_dir))))


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
