"""push: publish a blessed, infra-validated SavedModel as the next version in TF Serving's layout.

TF Serving watches `<serving_root>/<model_name>/` and loads the highest integer directory, so
a version directory must never be visible half-written. The version is assembled in a staging
directory first — the SavedModel, the operating threshold chosen by evaluate written into
`assets/threshold.txt`, and the lineage — and infra-validated there, in a separate process.
Then it is published: locally by renaming the staging directory into place in one atomic step;
on object stores, where there is no rename, by copying with saved_model.pb last (TF Serving does
not load a version without it). An existing version is never overwritten. Afterwards only the
newest `keep_versions` versions are kept; the served (highest) one is never deleted.

Rollback publishes an earlier version again as a new highest version, so that TF Serving's
default "latest" policy serves it without any change to the server's config, nothing is
deleted, and the lineage records `rollback_of`.

    radflow push runs/model runs/evaluation models --statistics runs/validation
    radflow models models
    radflow rollback models --to 3
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from radflow import fileio
from radflow.components.evaluate.evaluate import CANARY_FILE, read_blessing, read_report
from radflow.components.evaluate.gates import Blessing
from radflow.components.push.config import PushConfig
from radflow.components.push.infra_validation import infra_validate
from radflow.components.push.layout import (
    LINEAGE_DIR,
    LINEAGE_FILE,
    SAVED_MODEL_PB,
    TRAIN_STATISTICS_FILE,
    live_version,
    read_lineage,
    version_path,
    versions,
)
from radflow.components.train.train import KERAS_MODEL_FILE, RESULT_FILE, SAVED_MODEL_DIR, THRESHOLD_ASSET

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"  # not an integer, so TF Serving never loads a staging directory
STALE_STAGING_S = 24 * 3600  # a staging directory this old belongs to a push that was killed
TRAIN_STATISTICS = os.path.join("statistics", "train.pb")  # in validate's output (validate.STATISTICS_DIR)
# Summary metrics `radflow models` shows per version.
SUMMARY_METRICS = ("roc_auc", "recall", "specificity", "pr_auc", "ece")


@dataclass(frozen=True)
class PushResult:
    pushed: bool
    reason: str
    version: int | None = None
    path: str = ""
    infra_validation: dict = field(default_factory=dict)  # passed, problems, latency_ms
    removed_versions: list[int] = field(default_factory=list)  # deleted by retention
    # judged_against (the blessing's production version), at_push (production when pushing), and the
    # action: "unchanged", "refused" or "recompared" (then also the new comparison's gates)
    production_check: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as `radflow models` lists it."""

    version: int
    live: bool
    pushed_at: str
    threshold: float | None
    metrics: dict[str, float]
    parent_version: int | None
    rollback_of: int | None
    run_id: str


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _claimed(model_root: str) -> int:
    """The highest integer directory, complete or not: a new version must be above any partial upload."""
    return max((int(n) for n in fileio.listdir(model_root) if n.isdigit()), default=0)


@contextlib.contextmanager
def _staging(model_root: str) -> Iterator[str]:
    """A directory to assemble a version in, removed afterwards unless it was published (renamed away).

    Local: a hidden directory inside the model root, on the same filesystem, so publishing is
    one rename. Object store: a local temporary directory, uploaded by `_publish`.
    """
    if fileio.is_remote(model_root):
        with tempfile.TemporaryDirectory(prefix="radflow-push-") as tmp:
            yield os.path.join(tmp, "version")
        return
    os.makedirs(model_root, exist_ok=True)
    staged = os.path.join(model_root, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _publish(staged: str, model_root: str) -> tuple[int, str]:
    """Makes the staged directory the next version; returns (version, path)."""
    if fileio.is_remote(model_root):
        version = _claimed(model_root) + 1
        target = version_path(model_root, version)
        if fileio.exists(target):
            raise FileExistsError(f"{target} already exists; refusing to overwrite a published version")
        fileio.copytree(staged, target, last=SAVED_MODEL_PB)
        return version, target
    while True:
        version = _claimed(model_root) + 1
        target = version_path(model_root, version)
        try:
            # os.rename of a directory is atomic and fails if the target exists (and is not
            # empty), so two concurrent pushes cannot claim the same version.
            os.rename(staged, target)
            return version, target
        except OSError:
            if not os.path.exists(target):
                raise


def apply_retention(model_root: str, keep: int) -> list[int]:
    """Deletes all but the newest `keep` versions (0: keep all); the served, highest one always stays.

    Also removes local staging directories left by pushes killed more than a day ago.

    Returns:
        The deleted versions.
    """
    if not fileio.is_remote(model_root) and os.path.isdir(model_root):
        for name in os.listdir(model_root):
            path = os.path.join(model_root, name)
            if name.startswith(STAGING_PREFIX) and time.time() - os.path.getmtime(path) > STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)
    published = versions(model_root)
    if keep <= 0 or len(published) <= keep:
        return []
    doomed = published[: len(published) - max(1, keep)]
    for version in doomed:
        _unpublish(model_root, version)
    log.info("push: retention removed version(s) %s", doomed)
    return doomed


def _unpublish(model_root: str, version: int) -> None:
    """Deletes a version so that no reader ever sees it half gone but still loadable."""
    path = version_path(model_root, version)
    if fileio.is_remote(model_root):
        fileio.remove(os.path.join(path, SAVED_MODEL_PB))  # first: the rest is then invisible to servers
        fileio.rmtree(path)
        return
    hidden = os.path.join(model_root, f"{STAGING_PREFIX}deleting-{version}-{uuid.uuid4().hex}")
    os.rename(path, hidden)  # atomically unpublished, then deleted at leisure
    shutil.rmtree(hidden)


def _write_lineage(staged: str, lineage: dict, statistics_dir: str | None, canary: bytes | None) -> None:
    lineage_dir = os.path.join(staged, LINEAGE_DIR)
    os.makedirs(lineage_dir, exist_ok=True)
    with open(os.path.join(lineage_dir, LINEAGE_FILE), "w") as f:
        json.dump(lineage, f, indent=2, sort_keys=True)
    if statistics_dir:
        fileio.copy_file(os.path.join(statistics_dir, TRAIN_STATISTICS), os.path.join(lineage_dir,
                                                                                      TRAIN_STATISTICS_FILE))
    if canary is not None:
        with open(os.path.join(lineage_dir, CANARY_FILE), "wb") as f:
            f.write(canary)


def push(
    model_dir: str,
    evaluation_dir: str,
    serving_root: str,
    config: PushConfig = PushConfig(),
    statistics_dir: str | None = None,
    run_id: str = "",
) -> PushResult:
    """Publishes the model if, and only if, its evaluation blessed it and it passes infra validation.

    Args:
        model_dir: a train output (holds saved_model/).
        evaluation_dir: an evaluate output (blessing.json, metrics.json with the threshold, canary.json).
        serving_root: local directory or gs:// prefix that TF Serving reads.
        config: model name, retention, infra-validation bounds.
        statistics_dir: a validate output; its train statistics are kept with the version as the
            drift baseline of later runs.
        run_id: the pipeline run, for lineage.

    Returns:
        Whether it was pushed and, if so, the version and its path. Not blessed and failed infra
        validation are normal outcomes (pushed=False, with the reason), not errors.

    Raises:
        FileNotFoundError: the model, evaluation or statistics directory is unfinished.
    """
    blessing = read_blessing(evaluation_dir)
    if not blessing.blessed:
        log.info("push: not pushed, model not blessed: %s", blessing.reason)
        return PushResult(False, f"not blessed: {blessing.reason}")
    report = read_report(evaluation_dir)
    model_root = os.path.join(serving_root, config.model_name)
    check = production_check(model_dir, report, blessing, model_root, config)
    if check["action"] == "refused":
        log.warning("push: not pushed: %s", check["reason"])
        return PushResult(False, check["reason"], production_check=check)
    canary = fileio.read_bytes(os.path.join(evaluation_dir, CANARY_FILE))
    src = os.path.join(model_dir, SAVED_MODEL_DIR)
    if not fileio.exists(os.path.join(src, SAVED_MODEL_PB)):
        raise FileNotFoundError(f"{src} holds no {SAVED_MODEL_PB}; is {model_dir} a finished train output?")
    if statistics_dir and not fileio.exists(os.path.join(statistics_dir, TRAIN_STATISTICS)):
        raise FileNotFoundError(f"{statistics_dir} holds no {TRAIN_STATISTICS}; is it a finished validate output?")
    training_path = os.path.join(model_dir, RESULT_FILE)
    lineage = {
        "run_id": run_id,
        "pushed_at": _now(),
        "model_name": config.model_name,
        "parent_version": live_version(model_root),
        "rollback_of": None,
        "data_fingerprint": report["data"].get("input_fingerprint"),
        "data": report["data"],
        "threshold": report["threshold"],
        "threshold_method": report["threshold_method"],
        "metrics": report["metrics"],
        "intervals": report["intervals"],
        "blessing": asdict(blessing),
        "production_check": check,
        "config": {"evaluate": report["config"], "push": asdict(config),
                   "training": json.loads(fileio.read_text(training_path)) if fileio.exists(training_path) else None},
        "source": {"model_dir": model_dir, "evaluation_dir": evaluation_dir, "statistics_dir": statistics_dir},
    }
    with _staging(model_root) as staged:
        fileio.copytree(src, staged)
        if report["threshold"] is not None:
            # repr() round-trips: the float32 the server parses is the one evaluate chose.
            with open(os.path.join(staged, "assets", THRESHOLD_ASSET), "w") as f:
                f.write(f"{report['threshold']!r}\n")
        _write_lineage(staged, lineage, statistics_dir, canary)
        keras_model = os.path.join(model_dir, KERAS_MODEL_FILE)
        if fileio.exists(keras_model):  # for Grad-CAM on the review page, published with the very version it explains
            fileio.copy_file(keras_model, os.path.join(staged, LINEAGE_DIR, KERAS_MODEL_FILE))
        infra = infra_validate(staged, json.loads(canary), config)
        if not infra.passed:
            log.warning("push: not pushed, infra validation failed: %s", infra.reason)
            return PushResult(False, f"infra validation failed: {infra.reason}", infra_validation=asdict(infra))
        version, path = _publish(staged, model_root)
    log.info("push: published version %d at %s", version, path)
    removed = apply_retention(model_root, config.keep_versions)
    return PushResult(True, blessing.reason, version, path, asdict(infra), removed, check)


def production_check(model_dir: str, report: dict, blessing: Blessing, model_root: str, config: PushConfig) -> dict:
    """Whether production is still the version the blessing was judged against, and what to do if not.

    A blessing that says "no production model yet" or "no worse than version 3" is only true while
    production is what it was. When it has moved, `config.on_stale_blessing` refuses, or compares
    again: the new production on the same test images, the same gates, the paired bootstrap.

    Returns:
        {"judged_against", "at_push", "action": "unchanged" | "refused" | "recompared", "reason",
        and for a comparison "gates" and "blessed"}.
    """
    live = live_version(model_root)
    check = {"judged_against": blessing.baseline_version, "at_push": live, "action": "unchanged", "reason": ""}
    if live == blessing.baseline_version:
        return check
    judged = blessing.baseline_version
    was = "no production model" if judged is None else f"production version {judged}"
    moved = (f"the blessing was judged against {was}, but production under {model_root} is now version {live}"
             if live is not None else f"the blessing was judged against {was}, but {model_root} has no version now")
    if config.on_stale_blessing == "refuse" or live is None:
        return {**check, "action": "refused", "reason": f"stale blessing: {moved}; evaluate again against the current "
                "production (or set push.on_stale_blessing: recompare)"}
    fresh = recompare(model_dir, report, model_root, live)
    action = "recompared" if fresh.blessed else "refused"
    reason = (f"{moved}; compared again: {fresh.reason}" if fresh.blessed else
              f"stale blessing: {moved}, and compared again it is not blessed: {fresh.reason}")
    return {**check, "action": action, "reason": reason, "blessed": fresh.blessed, "gates": fresh.gates}


def recompare(model_dir: str, report: dict, model_root: str, version: int) -> Blessing:
    """The blessing the candidate gets against production `version`, from its evaluation's own settings."""
    from radflow.components.evaluate.config import EvaluateConfig
    from radflow.components.evaluate.evaluate import EVAL_SPLIT, score_baseline, score_split
    from radflow.components.evaluate.gates import Evidence, decide_blessing

    config = EvaluateConfig(**report["config"])
    examples_dir = report["data"]["examples_dir"]
    test = score_split(os.path.join(model_dir, SAVED_MODEL_DIR), examples_dir, EVAL_SPLIT, config.batch_size)
    baseline = score_baseline(version, version_path(model_root, version), examples_dir, test, report["threshold"],
                              config)
    rates = {f"{key}/{c}": report["class_rates"][name][rate] for c, name in enumerate(report["label_names"])
             for key, rate in (("recall", "sensitivity"), ("specificity", "specificity"))}
    evidence = Evidence(report["metrics"], rates, {k: tuple(v) for k, v in report["intervals"].items()},
                        report["label_names"], report["threshold"])
    return decide_blessing(evidence, config, baseline, model_root, report.get("limitations", []))


def rollback(serving_root: str, to_version: int, config: PushConfig = PushConfig(), run_id: str = "") -> PushResult:
    """Serves an earlier version again by re-publishing it as the new highest version.

    The copy is infra-validated with the canary requests stored in its lineage (when it has
    them) before it is published, exactly like a push.

    Args:
        serving_root: local directory or gs:// prefix.
        to_version: the published version to serve.
        config: model name, retention, infra-validation bounds.
        run_id: who or what asked, for lineage.

    Returns:
        The new version; its lineage has rollback_of=to_version.

    Raises:
        ValueError: to_version is not published, or is already the one served.
    """
    model_root = os.path.join(serving_root, config.model_name)
    published = versions(model_root)
    if to_version not in published:
        raise ValueError(f"version {to_version} is not published under {model_root}; published: {published}")
    live = published[-1]
    if to_version == live:
        raise ValueError(f"version {to_version} is already the one served")
    source = version_path(model_root, to_version)
    lineage = read_lineage(model_root, to_version)
    lineage.update(run_id=run_id, pushed_at=_now(), parent_version=live, rollback_of=to_version)
    with _staging(model_root) as staged:
        fileio.copytree(source, staged)
        os.makedirs(os.path.join(staged, LINEAGE_DIR), exist_ok=True)  # versions pushed before lineage had none
        with open(os.path.join(staged, LINEAGE_DIR, LINEAGE_FILE), "w") as f:
            json.dump(lineage, f, indent=2, sort_keys=True)
        canary_path = os.path.join(staged, LINEAGE_DIR, CANARY_FILE)
        infra = None
        if os.path.exists(canary_path):
            with open(canary_path) as f:
                infra = infra_validate(staged, json.load(f), config)
            if not infra.passed:
                return PushResult(False, f"infra validation failed: {infra.reason}", infra_validation=asdict(infra))
        version, path = _publish(staged, model_root)
    log.info("rollback: version %d now serves the model of version %d", version, to_version)
    removed = apply_retention(model_root, config.keep_versions)
    return PushResult(True, f"rollback to version {to_version}", version, path,
                      asdict(infra) if infra else {}, removed)


def list_versions(serving_root: str, model_name: str = "radflow") -> list[VersionInfo]:
    """The published versions with their lineage's headline metrics; the highest is the live one."""
    model_root = os.path.join(serving_root, model_name)
    published = versions(model_root)
    infos = []
    for v in published:
        lineage = read_lineage(model_root, v)
        metrics = lineage.get("metrics", {})
        infos.append(VersionInfo(
            version=v, live=v == published[-1], pushed_at=lineage.get("pushed_at", ""),
            threshold=lineage.get("threshold"), metrics={k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
            parent_version=lineage.get("parent_version"), rollback_of=lineage.get("rollback_of"),
            run_id=lineage.get("run_id", "")))
    return infos
