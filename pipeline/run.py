"""Runs the whole pipeline on this machine with kfp.local's SubprocessRunner.

Each task runs as a subprocess of this Python environment, exactly the component code a
cluster runs in the image. Outputs land under `<pipeline_root>/radflow-<timestamp>/<task>/`.

    radflow run --local --data data/sample --serving-root models
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace

from radflow.components.evaluate.evaluate import METRICS_FILE, Blessing, read_blessing
from radflow.pipeline.config import PipelineConfig
from radflow.pipeline.pipeline import build_pipeline


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
        RuntimeError: a task failed; kfp.local has printed its logs above.
    """
    from kfp import local

    config = replace(config, data=_absolute(config.data), serving_root=_absolute(config.serving_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(config.pipeline_root))
    with warnings.catch_warnings():
        # kfp.local warns when a base image name lacks "python"; ours is the project's own
        # Python image, and locally every task runs in this very environment anyway.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        run = build_pipeline(config)()
    evaluation_dir = run.outputs["evaluation"].path
    with open(run.outputs["pushed"].path) as f:
        pushed = json.load(f)
    with open(os.path.join(evaluation_dir, METRICS_FILE)) as f:
        metrics = json.load(f)["metrics"]
    return LocalRunResult(run.outputs["examples"].path, evaluation_dir, metrics, read_blessing(evaluation_dir), pushed)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
