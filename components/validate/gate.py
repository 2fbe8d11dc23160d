"""The validation gate: the step after validate that stops the run on validate's verdict.

On a Kubeflow cluster, the KFP launcher uploads and registers a task's output artifacts only when
its command succeeds: kubeflow/pipelines backend/src/v2/component/launcher_v2.go at tag 2.5.0
(d07cf1c7), executeV2, returns on the command's error before uploadOutputArtifacts; on master
(7b70c7b9) a failed command registers only its executor logs. A validate step that raised would so
take its anomaly report and statistics page with it, exactly when they are needed. Validate
therefore always completes and records the verdict in its statistics artifact (validation.json);
this step reads it and fails the run with the blocking findings, while the reports are already in
the KFP UI, on the validate task. kfp.local runs the same two tasks.
"""

from __future__ import annotations

from radflow.components.validate.config import ValidateConfig
from radflow.components.validate.validate import DataValidationError, ValidationResult, read_result


def gate(statistics_dir: str, config: ValidateConfig) -> ValidationResult:
    """Passes a run whose validation found nothing blocking; fails it otherwise (unless fail_on_anomalies is off).

    Args:
        statistics_dir: a finished validate output (holding validation.json).
        config: the run's ValidateConfig (fail_on_anomalies decides).

    Returns:
        The verdict.

    Raises:
        FileNotFoundError: validate never finished in `statistics_dir`.
        DataValidationError: blocking findings and `config.fail_on_anomalies`; the message lists every one.
    """
    result = read_result(statistics_dir)
    if result.anomalies and config.fail_on_anomalies:
        listing = "\n".join(f"  - {line}" for line in result.anomalies)
        raise DataValidationError(f"data validation found {len(result.anomalies)} anomalies:\n{listing}\n"
                                  "The validate task's report and statistics_report artifacts show the details.")
    return result
