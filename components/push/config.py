"""Options of the push stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from radflow.config_types import NonNegative, NonNegativeFloat, Positive, PositiveFloat

StaleAction = Literal["refuse", "recompare"]
STALE_ACTIONS = ("refuse", "recompare")


@dataclass(frozen=True)
class PushConfig:
    model_name: str = "radflow"  # the directory under serving_root, and the name clients ask TF Serving for
    keep_versions: NonNegative = 5  # versions kept after a push, newest first (the served one always); 0 keeps all
    max_latency_ms: PositiveFloat = 2000.0  # infra validation: p95 latency of one-image canary requests must stay below
    latency_requests: Positive = 10  # infra validation: timed one-image requests, after one warm-up
    score_tolerance: NonNegativeFloat = 1e-4  # infra validation: largest allowed difference from evaluate's scores
    infra_timeout_s: Positive = 300  # infra validation: the loading-and-serving subprocess is killed after this
    # A blessing names the production version it was judged against. When production has moved since
    # (another run pushed, a rollback), "refuse" stops the push and says to evaluate again; "recompare"
    # scores the new production on the same test images and pushes only if the paired comparison passes.
    on_stale_blessing: StaleAction = "refuse"

    def __post_init__(self):
        if self.on_stale_blessing not in STALE_ACTIONS:
            raise ValueError(f"on_stale_blessing must be one of {STALE_ACTIONS}, got {self.on_stale_blessing!r}")
