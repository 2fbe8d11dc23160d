"""The runs of a KFP experiment, as a team reads them: list, one run's steps and why it failed, cancel.

    radflow runs list --host http://localhost:8080 --namespace team-xray
    radflow runs get RUN_ID --host http://localhost:8080
    radflow runs cancel RUN_ID --host http://localhost:8080

Run state and the steps' states and messages come from the run details (the same the KFP UI
shows), read through the step filter `submit --wait` uses, so KFP's own driver tasks are left out.
"""

from __future__ import annotations

from typing import Any

from radflow.pipeline.submit import ACTIVE, run_url, steps


def list_runs(client: Any, namespace: str = "", experiment: str | None = None, limit: int = 20) -> list[Any]:
    """The newest `limit` runs of `namespace` ("" on a single-user KFP), or of one experiment there.

    Raises:
        ValueError: no experiment of that name in the namespace.
    """
    experiment_id = None
    if experiment:
        experiment_id = client.get_experiment(experiment_name=experiment, namespace=namespace or None).experiment_id
    page = client.list_runs(page_size=limit, sort_by="created_at desc", experiment_id=experiment_id,
                            namespace=namespace or None)
    return list(page.runs or ())


def describe_run(run: Any, host: str) -> list[str]:
    """Lines for one run: its state, every step's state (a failed one with its message), and its UI link."""
    lines = [f"run {run.run_id} '{run.display_name or ''}': {run.state} (created {run.created_at}"
             + (f", finished {run.finished_at}" if run.finished_at and run.state not in ACTIVE else "") + ")"]
    for step in steps(run):
        lines.append(f"  {step.name}: {step.state}" + (f": {step.message}" if step.state == "FAILED" and step.message
                                                        else ""))
    if run.error and run.error.message:
        lines.append(f"  run error: {run.error.message}")
    lines.append(run_url(host, run.run_id))
    return lines


def cancel(client: Any, run_id: str) -> Any:
    """Terminates a pending or running run (KFP's terminate: its pods are stopped, its state becomes CANCELED).

    Returns:
        The run as it was before.

    Raises:
        ValueError: the run has already ended.
    """
    run = client.get_run(run_id)
    if run.state not in ACTIVE:
        raise ValueError(f"run {run_id} has already ended ({run.state}): nothing to cancel")
    client.terminate_run(run_id)
    return run
