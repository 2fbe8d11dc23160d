"""Scheduled retraining: recurring runs of the pipeline on a KFP endpoint, managed by name.

A schedule runs at most one run at a time (a slow retrain is never overtaken by the next one)
and never catches up on missed times (a paused schedule resumes with one run, not a backlog).
KFP cannot update a recurring run in place, so scheduling an existing name creates the new one
first and then deletes the old, leaving no moment without a schedule.

    radflow schedule --host http://localhost:8080 --cron '0 0 3 * * 0' --param data=gs://bucket/chest_xray
    radflow schedule --host http://localhost:8080 --list
    radflow schedule --host http://localhost:8080 --delete radflow-retrain
"""

from __future__ import annotations

import json
import logging
from typing import Any

from radflow.pipeline.upload import PipelineVersion

log = logging.getLogger(__name__)

DEFAULT_NAME = "radflow-retrain"
_PAGE_SIZE = 100


def check_cron(cron: str) -> str:
    """KFP's cron has six fields, seconds first ('0 0 3 * * 0' is Sundays at 03:00).

    Raises:
        ValueError: not six fields (the common five-field form would silently mean something else).
    """
    if len(cron.split()) != 6:
        raise ValueError(f"cron {cron!r}: KFP needs 6 fields, seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    return cron


def list_schedules(client: Any, name: str | None = None, namespace: str = "") -> list[Any]:
    """All recurring runs of `namespace` ("" on a single-user KFP), or those named `name`, across every page."""
    filter_ = None
    if name is not None:
        filter_ = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=_PAGE_SIZE, filter=filter_,
                                          namespace=namespace or None)
        found.extend(page.recurring_runs or ())
        token = page.next_page_token or ""
        if not token:
            break
    # The name filter is the server's; checking again keeps a server that ignores it from deleting others.
    return [r for r in found if name is None or r.display_name == name]


def schedule(client: Any, package_path: str | None, name: str, cron: str, params: dict[str, Any],
             experiment: str, pipeline_root: str | None = None, service_account: str | None = None,
             namespace: str = "", version: PipelineVersion | None = None) -> Any:
    """Creates the recurring run `name`, replacing any existing one of that name.

    Args:
        client: a kfp.Client.
        package_path: the compiled pipeline YAML, sent inline; None with `version`.
        name: the schedule's display name.
        cron: six-field cron expression.
        params: run parameters.
        experiment: experiment the runs belong to (created if missing).
        pipeline_root: where the runs' artifacts go; None = KFP's default.
        service_account: the Kubernetes service account the steps run as.
        namespace: the Kubeflow profile of the experiment and the schedule; "" on a single-user KFP.
        version: an uploaded pipeline version (`radflow upload`) every run starts from, instead of an inline spec.

    Returns:
        The new recurring run.

    Raises:
        ValueError: a malformed cron expression.
    """
    check_cron(cron)
    old = list_schedules(client, name, namespace)
    experiment_id = client.create_experiment(name=experiment, namespace=namespace or None).experiment_id
    source = ({"pipeline_id": version.pipeline_id, "version_id": version.version_id} if version
              else {"pipeline_package_path": package_path})
    new = client.create_recurring_run(
        experiment_id=experiment_id, job_name=name, cron_expression=cron, max_concurrency=1, no_catchup=True,
        params=params, pipeline_root=pipeline_root, service_account=service_account, enabled=True, **source)
    for r in old:
        log.info("replacing recurring run %s (%s)", r.recurring_run_id, r.display_name)
        client.delete_recurring_run(r.recurring_run_id)
    return new


def delete_schedule(client: Any, name: str, namespace: str = "") -> int:
    """Deletes every recurring run named `name` in `namespace`.

    Returns:
        How many were deleted.

    Raises:
        ValueError: none has that name (the message lists those that exist).
    """
    found = list_schedules(client, name, namespace)
    if not found:
        existing = sorted({r.display_name for r in list_schedules(client, namespace=namespace)})
        raise ValueError(f"no recurring run named {name!r}; existing: {existing or 'none'}")
    for r in found:
        client.delete_recurring_run(r.recurring_run_id)
    return len(found)
