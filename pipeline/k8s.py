"""What a pod's status says about why it is not running, for the run waiter and the TFJob launcher.

Kubernetes keeps a pod that no node can take in phase Pending with a PodScheduled=False condition
(reason Unschedulable) and retries forever; KFP and the Training Operator both report such a step
as still running. Reading that condition is the only way to fail fast with the scheduler's reason.
"""

from __future__ import annotations

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
