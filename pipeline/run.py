"""Runs the whole pipeline on this machine with kfp.local's SubprocessRunner.

Each task runs as a subprocess of this Python environment, exactly the component code a
cluster runs in the image. Outputs land under `<pipeline_root>/radflow-<timestamp>/<task>/`.

    radflow run --local --data data/sample --serving-root models
"""

from __future__ import annotations

import glob
import json
import os
import time
import warnings
from dataclasses import dataclass, replace

from radflow.components.evaluate.evaluate import METRICS_FILE, Blessing, read_blessing
from radflow.pipeline.config import PipelineConfig
from radflow.pipeline.pipeline import PIPELINE_NAME, build_pipeline


@dataclass(frozen=True)
class LocalRunResult:
    examples_dir: str
    evaluation_dir: str
    metrics: dict[str, float]
    blessing: Blessing
    pushed: dict  # push.json: pushed, reason, version, path


def run_local(config: PipelineConfig) -> LocalRunResult:
    """Runs the pipeline under kfp.local and returns what evaluate and push reported.

    Args:
        config: the pipeline config; relative paths are taken from the current directory.

    Returns:
        The evaluation metrics, the blessing and the push result.

    Raises:
        RuntimeError: a task failed; kfp.local has printed its logs above. When validation stopped the
            run, the message names validate's published reports.
    """
    from kfp import local

    config = replace(config, data=_absolute(config.data), serving_root=_absolute(config.serving_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(config.pipeline_root))
    started = time.time()
    with warnings.catch_warnings():
        # kfp.local warns when a base image name lacks "python"; ours is the project's own
        # Python image, and locally every task runs in this very environment anyway.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        try:
            run = build_pipeline(config)()
        except RuntimeError as err:
            reports = _validation_reports(config, started)
            if not reports:
                raise
            raise RuntimeError(f"{err}\nvalidate's reports: {', '.join(reports)}") from err
    evaluation_dir = run.outputs["evaluation"].path
    with open(run.outputs["pushed"].path) as f:
        pushed = json.load(f)
    with open(os.path.join(evaluation_dir, METRICS_FILE)) as f:
        metrics = json.load(f)["metrics"]
    return LocalRunResult(run.outputs["examples"].path, evaluation_dir, metrics, read_blessing(evaluation_dir), pushed)


def _validation_reports(config: PipelineConfig, started: float) -> list[str]:
    """The reports validate published in the run begun at `started`, if its verdict stopped that run; else []."""
    from radflow.components.validate.validate import RESULT_FILE, read_result

    if not config.validate.fail_on_anomalies:
        return []
    runs = [d for d in glob.glob(os.path.join(os.path.abspath(config.pipeline_root), f"{PIPELINE_NAME}-*"))
            if os.path.getmtime(d) >= started - 1]  # kfp.local names each run's folder by its start time
    if not runs:
        return []
    validate_dir = os.path.join(max(runs, key=os.path.getmtime), "validate")
    statistics = os.path.join(validate_dir, "statistics")
    if not os.path.isfile(os.path.join(statistics, RESULT_FILE)) or read_result(statistics).passed:
        return []
    return [os.path.join(validate_dir, "report"), os.path.join(validate_dir, "statistics_report")]


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
