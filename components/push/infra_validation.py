"""Infra validation: can a server load this SavedModel and answer real requests correctly, in time?

Run before a version is published, on the exact directory about to be published. The model is
loaded in a separate process, as a server would load it, so a model that crashes or hangs the
loader fails here instead of taking the pusher (or TF Serving) down, and nothing the pusher
already imported can mask a missing op or asset. The canary requests are real encoded test
images recorded by evaluate together with the scores it saw; the checks are the signature's
output shapes, finite probabilities, the scores matching evaluate's, the served threshold, and
the latency of one-image requests.

The child writes nothing to disk: the canary (real test images: patient data) reaches it on stdin
and its verdict comes back on stdout. It dies with its parent: on Linux it asks the kernel for
SIGKILL when the parent exits (PR_SET_PDEATHSIG) before it imports TensorFlow, so a push killed
with SIGKILL leaves no process and no file behind.

    python -m radflow.components.push.infra_validation SAVED_MODEL PARENT_PID CONFIG_JSON < CANARY_JSON
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from radflow.components.push.config import PushConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfraValidation:
    """Outcome of infra validation.

    Args:
        passed: every check passed.
        problems: what failed, one line each.
        latency_ms: p50 and p95 of the timed one-image requests.
    """

    passed: bool
    problems: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.problems) if self.problems else "all checks passed"


def check_servable(saved_model_dir: str, canary: dict, config: PushConfig) -> InfraValidation:
    """Loads the SavedModel in this process and checks its `serving_default` on the canary requests.

    Args:
        saved_model_dir: the directory a server would load.
        canary: evaluate's canary.json: base64 PNG requests, their expected scores and threshold.
        config: latency bound, number of timed requests, score tolerance.

    Returns:
        The checks' outcome; a model that does not load is a failure, not an exception.
    """
    import tensorflow as tf

    from radflow.components.train.train import CLASSES, SCORES, SERVING_INPUT, THRESHOLD

    requests = [base64.b64decode(b) for b in canary["image_bytes_b64"]]
    expected = np.array(canary["scores"], dtype=np.float32)
    if not requests:
        return InfraValidation(False, ["no canary requests: evaluate recorded no test images"])
    try:
        serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
        answer = serve(**{SERVING_INPUT: tf.constant(requests)})
    except Exception as err:  # any failure to load or answer is exactly what this check reports
        return InfraValidation(False, [f"serving_default failed: {type(err).__name__}: {str(err)[:300]}"])
    n, k = expected.shape
    problems = []
    missing = {SCORES, CLASSES, THRESHOLD} - set(answer)
    if missing:
        problems.append(f"serving_default lacks output(s) {sorted(missing)}")
    scores = answer[SCORES].numpy() if SCORES in answer else np.zeros((0, 0))
    if scores.shape != (n, k):
        problems.append(f"scores have shape {scores.shape}, expected {(n, k)}")
    elif not np.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        problems.append("scores are not finite probabilities in [0, 1]")
    elif not np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        problems.append("class scores do not sum to 1")
    elif np.abs(scores - expected).max() > config.score_tolerance:
        problems.append(f"scores differ from the evaluated model's by up to {np.abs(scores - expected).max():.2e} "
                        f"(> {config.score_tolerance}): this is not the model that was evaluated")
    if CLASSES in answer and tuple(answer[CLASSES].shape) != (n, k):
        problems.append(f"classes have shape {tuple(answer[CLASSES].shape)}, expected {(n, k)}")
    if THRESHOLD in answer and canary.get("threshold") is not None:
        served = answer[THRESHOLD].numpy()
        if served.shape != (n,) or not np.allclose(served, canary["threshold"], atol=1e-6):
            problems.append(f"served threshold {served[:1]} is not the chosen {canary['threshold']}")
    times = []
    for i in range(config.latency_requests + 1):  # the first call traces and warms up; not timed
        start = time.perf_counter()
        serve(**{SERVING_INPUT: tf.constant(requests[i % n : i % n + 1])})
        times.append((time.perf_counter() - start) * 1000)
    latency = {"p50": float(np.percentile(times[1:], 50)), "p95": float(np.percentile(times[1:], 95))}
    if latency["p95"] > config.max_latency_ms:
        problems.append(f"p95 latency {latency['p95']:.0f} ms of one-image requests exceeds {config.max_latency_ms} ms")
    return InfraValidation(not problems, problems, latency)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def infra_validate(saved_model_dir: str, canary: dict, config: PushConfig = PushConfig()) -> InfraValidation:
    """Runs `check_servable` in a fresh Python process and returns its verdict.

    Args:
        saved_model_dir: the directory about to be published.
        canary: evaluate's canary.json.
        config: checks and the subprocess timeout.

    Returns:
        The verdict; a crash or timeout of the subprocess is a failed validation with its reason.
    """
    command = [sys.executable, "-m", __name__, saved_model_dir, str(os.getpid()), json.dumps(asdict(config))]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, input=json.dumps(canary), capture_output=True, text=True,
                              timeout=config.infra_timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return InfraValidation(False, [f"loading and serving took longer than {config.infra_timeout_s} s"])
    try:
        result = InfraValidation(**json.loads(done.stdout)) if done.returncode == 0 else None
    except (ValueError, TypeError):
        result = None
    if result is None:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[-500:]
        return InfraValidation(False, [f"the serving process exited with code {done.returncode}: {tail}"])
    log.info("infra validation of %s: %s (latency %s)", saved_model_dir, result.reason, result.latency_ms)
    return result


def _die_with_parent(parent: int) -> None:
    """Asks Linux to SIGKILL this process when its parent exits; exits now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    saved_model_dir, parent, config_json = argv if argv is not None else sys.argv[1:]
    _die_with_parent(int(parent))
    canary = json.load(sys.stdin)
    # The verdict goes to the real stdout; anything else printed (TensorFlow) goes to stderr.
    verdict = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    result = check_servable(saved_model_dir, canary, PushConfig(**json.loads(config_json)))
    json.dump(asdict(result), verdict)
    verdict.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
