"""What a pod's status and events say about why it is not running, for the run waiter and the TFJob launcher.

Kubernetes keeps a pod that no node can take in phase Pending with a PodScheduled=False condition
(reason Unschedulable) and retries forever; KFP and the Training Operator both report such a step
as still running. Reading that condition is the only way to fail fast with the scheduler's reason.
Where a cluster autoscaler runs, its events on the pod tell a pod waiting for a node being added,
or for room in a full pool, from one no pool can ever take (`scheduling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def unschedulable_reason(pod: Any) -> str | None:
    """The scheduler's message when `pod` cannot be placed on any node, else None.

    Args:
        pod: a kubernetes.client.V1Pod.

    Returns:
        e.g. "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", or None for a pod that is
        scheduled, still being scheduled for the first time, or gone.
    """
    status = getattr(pod, "status", None)
    if status is None or status.phase != "Pending":
        return None
    for condition in status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return condition.message or "Unschedulable"
    return None


# What the cluster autoscaler says about a pod it was asked to place, as events on the pod
# (kubernetes/autoscaler, cluster-autoscaler/processors/status/eventing_scale_up_processor.go at 16c271a3):
# TriggeredScaleUp "pod triggered scale-up: [{<group> 0->1 (max: 2)}]" when it adds a node for it, else
# NotTriggerScaleUp "pod didn't trigger scale-up: <count> <reason>, ..." with, per node group, why that group
# was left out. The reasons below (core/scaleup/orchestrator/skippedreasons.go at d6106728, and the cluster-wide
# limit in ReasonsMessage) mean a group that could host the pod has no room now: room comes when other pods
# finish or the backoff ends. Any other reason is the scheduler's verdict on the group's node template
# ("Insufficient nvidia.com/gpu", "didn't match Pod's node affinity/selector", "untolerated taint"): no node
# of that group, present or added, can take the pod.
AUTOSCALER = "cluster-autoscaler"
TRIGGERED_SCALE_UP, NOT_TRIGGERED_SCALE_UP = "TriggeredScaleUp", "NotTriggerScaleUp"
CAPACITY_REASONS = ("max node group size reached", "max total nodes in cluster reached",
                    "in backoff after failed scale-up", "not ready for scale-up", "exceeded quota")

UNSCHEDULABLE = "unschedulable"  # pending with no word from an autoscaler (none installed, or not yet)
SCALING_UP = "scaling up"  # the autoscaler is adding a node for it
WAITING_FOR_CAPACITY = "waiting for capacity"  # a node group fits it but is at its maximum (or backing off)
NEVER_FITS = "never fits"  # no node group can ever take it


@dataclass(frozen=True)
class PodView:
    """A pod and the events about it, as one read of the Kubernetes API returns them."""

    pod: Any
    events: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Scheduling:
    state: str  # UNSCHEDULABLE, SCALING_UP, WAITING_FOR_CAPACITY or NEVER_FITS
    message: str


def _when(event: Any) -> Any:
    series = getattr(event, "series", None)
    return (getattr(series, "last_observed_time", None) or event.last_timestamp or event.event_time
            or event.first_timestamp)


def scheduling(view: PodView) -> Scheduling | None:
    """Why a pending pod is not placed yet, and whether waiting can help; None for a pod that is placed or gone.

    The autoscaler's latest verdict on the pod decides: a scale-up in progress and a node group at its
    maximum are worth waiting for; a pod no node group fits never will be. Without any verdict (no
    autoscaler, e.g. kind) the scheduler's message is all there is.
    """
    reason = unschedulable_reason(view.pod)
    if reason is None:
        return None
    verdicts = [e for e in view.events if e.reason in (TRIGGERED_SCALE_UP, NOT_TRIGGERED_SCALE_UP)
                and AUTOSCALER in ((getattr(e.source, "component", None) or ""), e.reporting_component or "")
                and _when(e) is not None]
    if not verdicts:
        return Scheduling(UNSCHEDULABLE, reason)
    latest = max(verdicts, key=_when)
    if latest.reason == TRIGGERED_SCALE_UP:
        return Scheduling(SCALING_UP, f"{latest.message} (scheduler: {reason})")
    if any(r in latest.message for r in CAPACITY_REASONS):
        return Scheduling(WAITING_FOR_CAPACITY, f"{latest.message} (scheduler: {reason})")
    return Scheduling(NEVER_FITS, f"{latest.message} (scheduler: {reason})")
